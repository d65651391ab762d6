"""The HTML form for workflow definitions; the one validator is workflows.schema."""

from __future__ import annotations

from django import forms

from workflows.schema import SpecError, WorkflowSpec, parse_document

MAX_UPLOAD_BYTES = 1_000_000


class SpecForm(forms.Form):
    """A definition as JSON or YAML text, or an uploaded file (the file wins when both are given)."""

    document = forms.CharField(widget=forms.Textarea(attrs={"rows": 28, "spellcheck": "false"}), required=False,
                               label="Definition (JSON or YAML)")
    upload = forms.FileField(required=False, label="…or upload a .json / .yaml file")

    def __init__(self, *args, expected_id: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected_id = expected_id
        self.spec_errors: dict[str, list[str]] = {}
        self.spec: WorkflowSpec | None = None

    def clean(self):
        data = super().clean()
        upload = data.get("upload")
        if upload is not None:
            if upload.size > MAX_UPLOAD_BYTES:
                raise forms.ValidationError(f"the file is larger than {MAX_UPLOAD_BYTES} bytes")
            text: str | bytes = upload.read()
            name = (upload.name or "").lower()
            fmt = "json" if name.endswith(".json") else "yaml" if name.endswith((".yaml", ".yml")) else "auto"
        else:
            text, fmt = data.get("document") or "", "auto"
            if not text.strip():
                raise forms.ValidationError("paste a definition or choose a file")
        try:
            spec = parse_document(text, fmt=fmt, definition_id=self.expected_id)
        except SpecError as exc:
            self.spec_errors = exc.errors
            raise forms.ValidationError("the definition is not valid: see the messages by field path") from None
        self.spec = spec
        return data
