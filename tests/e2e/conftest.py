"""The `stack` fixture of the e2e tests: the whole product as subprocesses on the test database."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.e2e.harness import Stack


@pytest.fixture
def stack(tmp_path, transactional_db):
    stack = Stack(database_name=connection.settings_dict["NAME"], log_dir=tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()
        # Leave nothing for the flush to trip over.
        from django_q.models import OrmQ

        OrmQ.objects.all().delete()
