"""Export workflow definitions as JSON or YAML, to stdout or one file per definition."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from django.core.management.base import CommandError

from opscore_site.commands import OpsCommand
from workflows.models import WorkflowDefinition
from workflows.schema import SpecError


class Command(OpsCommand):
    help = (
        "Export workflow definitions in the upstream JSON shape (or YAML). Prints to stdout unless "
        "--output DIR is given, which writes one importable <id>.json / <id>.yaml file per definition. "
        "On stdout one definition is printed as a bare document (importable as a file); several as a "
        "JSON list or as YAML documents separated by ---."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--id", action="append", dest="ids", default=[], metavar="ID",
                            help="Export only this definition (repeatable). Default: all.")
        parser.add_argument("--format", choices=["json", "yaml"], default="json", help="Default: json.")
        parser.add_argument("--output", metavar="DIR", help="Write one file per definition into DIR.")

    def handle(self, *args, ids: list[str], format: str, output: str | None, **options) -> None:
        definitions = WorkflowDefinition.objects.order_by("id")
        if ids:
            definitions = definitions.filter(pk__in=ids)
            missing = sorted(set(ids) - set(definitions.values_list("pk", flat=True)))
            if missing:
                raise CommandError(f"no workflow definition with id: {', '.join(missing)}")
        specs = []
        for definition in definitions:
            try:
                specs.append(definition.parsed)
            except SpecError as exc:  # a row edited behind the validator's back
                raise CommandError(f"stored definition '{definition.pk}' is invalid: {exc}") from None
        if output is None:
            if format == "json":
                documents = [spec.to_document() for spec in specs]
                body = documents[0] if len(documents) == 1 else documents
                self.stdout.write(json.dumps(body, indent=2), ending="\n")
            else:
                self.stdout.write(yaml.safe_dump_all([s.to_document() for s in specs], sort_keys=False,
                                                     allow_unicode=True), ending="")
            return
        directory = Path(output)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for spec in specs:
                target = directory / f"{spec.id}.{format}"
                target.write_text(spec.to_json() if format == "json" else spec.to_yaml(), encoding="utf-8")
                self.stdout.write(f"wrote {target}")
        except OSError as exc:
            raise CommandError(f"cannot write to {directory}: {exc.strerror or exc}") from None
        self.stdout.write(f"{len(specs)} definition(s) exported")
