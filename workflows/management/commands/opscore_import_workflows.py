"""Import workflow definitions from JSON/YAML files: validate every file first, then write all or nothing."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from opscore_site.commands import OpsCommand, atomic_or_dry_run
from workflows.schema import SpecError, WorkflowSpec, parse_document
from workflows.services import workflow_save

FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def _files(paths: list[str]) -> tuple[list[Path], dict[str, list[str]]]:
    files: list[Path] = []
    errors: dict[str, list[str]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
            if not found:
                errors[raw] = ["the directory has no .json, .yaml or .yml files"]
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in FORMATS:
                errors[raw] = [f"unknown file type '{path.suffix or '(none)'}': use .json, .yaml or .yml"]
            else:
                files.append(path)
        else:
            errors[raw] = ["no such file or directory"]
    return files, errors


class Command(OpsCommand):
    help = (
        "Import workflow definitions from JSON or YAML files (or directories of *.json/*.yaml/*.yml). "
        "Every file is validated before anything is written; on any error nothing is written and "
        "every problem is listed. Reports created/updated/unchanged per file."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="A file or a directory.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Validate and report what would change, but write nothing.")

    def handle(self, *args, paths: list[str], dry_run: bool, **options) -> None:
        files, errors = _files(paths)
        specs: list[tuple[Path, WorkflowSpec]] = []
        seen: dict[str, Path] = {}
        for path in dict.fromkeys(files):  # a file named twice is read once
            try:
                spec = parse_document(path.read_bytes(), fmt=FORMATS[path.suffix.lower()])
            except SpecError as exc:
                errors[str(path)] = exc.lines()
                continue
            except OSError as exc:
                errors[str(path)] = [f"cannot read: {exc.strerror or exc}"]
                continue
            if spec.id in seen:
                errors[str(path)] = [f"workflow id '{spec.id}' is also defined in {seen[spec.id]}"]
                continue
            seen[spec.id] = path
            specs.append((path, spec))
        if errors:
            for where, messages in errors.items():
                for message in messages:
                    self.stderr.write(f"{where}: {message}")
            raise CommandError(f"{len(errors)} file(s) with errors; nothing was imported")

        totals = {"created": 0, "updated": 0, "unchanged": 0}
        with atomic_or_dry_run(dry_run):
            for path, spec in specs:
                _, outcome = workflow_save(spec=spec, allow_update=True)
                totals[outcome] += 1
                self.stdout.write(f"{path}: {spec.id} {outcome}")
        summary = ", ".join(f"{count} {name}" for name, count in totals.items())
        prefix = "dry run, nothing written: would be " if dry_run else ""
        self.stdout.write(f"{prefix}{summary}")
