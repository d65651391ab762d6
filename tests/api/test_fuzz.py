"""Schemathesis fuzz of the served OpenAPI schema against the live app: no 5xx, only JSON errors."""

from __future__ import annotations

import os
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from agents.services import api_key_create
from tests.api.test_hostile_json import HOSTILE

# Raise for a longer run: OPSCORE_FUZZ_EXAMPLES=200 pytest tests/api/test_fuzz.py
EXAMPLES_PER_OPERATION = int(os.environ.get("OPSCORE_FUZZ_EXAMPLES", "12"))


@pytest.mark.django_db(transaction=True)
def test_fuzz_the_schema_finds_no_server_error(live_server, capsys):
    _, raw = api_key_create(name="fuzz")
    schema = schemathesis.openapi.from_url(f"{live_server.url}/v1/opscore/schema?format=json")
    headers = {"Authorization": f"Bearer {raw}"}
    ran = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                nonlocal ran
                ran += 1
                response = case.call(base_url=live_server.url, headers=headers, timeout=10)
                content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", "")
                if isinstance(content_type, list):  # schemathesis keeps every value of a header
                    content_type = content_type[0] if content_type else ""
                is_json = content_type.startswith("application/json")
                if response.status_code >= 500 or (response.status_code >= 400 and not is_json):
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:200]}")

            run()
        if operation.method.upper() in ("POST", "PUT", "PATCH"):
            # JSON that Python's json accepts but nothing downstream can store (tests/api/test_hostile_json.py).
            path = re.sub(r"\{[^}]+\}", "fuzz", operation.path)
            for value in HOSTILE.values():
                ran += 1
                response = httpx.request(operation.method.upper(), f"{live_server.url}{path}",
                                         content=f'{{"x": {value}}}'.encode(), timeout=10,
                                         headers={**headers, "Content-Type": "application/json"})
                if response.status_code >= 500:
                    failures.append(f"{operation.method} {path} hostile {value[:20]} -> {response.status_code}")
    with capsys.disabled():
        print(f"\nschemathesis: {ran} cases over {len(list(schema.get_all_operations()))} operations")
    assert ran > 100
    assert not failures, "\n".join(failures[:20])
