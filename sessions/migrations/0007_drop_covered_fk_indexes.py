"""Drop the foreign keys' own indexes where a composite index led by the same column serves
every lookup (and Django's cascades): a change of a task's status now writes up to 11 indexes, not 14.

The schema side is written out: Django's AlterField(db_index=False) drops every index on the
column that is not in Meta.indexes, and on PostgreSQL that includes the partial unique index
behind the `task_one_in_flight_per_agent` constraint. Here only the indexes Django created for
the foreign keys go, by name (the `_like` twins exist on PostgreSQL only).
"""

import django.db.models.deletion
from django.db import migrations, models

# (table, column, index name Django gave the foreign key's index)
COVERED = [
    ("opscore_sessions_quarantineevent", "agent_id", "opscore_sessions_quarantineevent_agent_id_d1708ca1"),
    ("opscore_sessions_session", "agent_id", "opscore_sessions_session_agent_id_81deb116"),
    ("opscore_sessions_task", "agent_id", "opscore_sessions_task_agent_id_d41f2a11"),
    ("opscore_sessions_task", "session_id", "opscore_sessions_task_session_id_347a4c24"),
    ("opscore_sessions_taskattempt", "agent_id", "opscore_sessions_taskattempt_agent_id_8a49dec5"),
    ("opscore_sessions_taskattempt", "task_id", "opscore_sessions_taskattempt_task_id_3779db70"),
    ("opscore_sessions_taskevent", "session_id", "opscore_sessions_taskevent_session_id_017fd2e1"),
    ("opscore_sessions_taskevent", "task_id", "opscore_sessions_taskevent_task_id_702baaf2"),
]


def drop_covered(apps, schema_editor):
    quote = schema_editor.quote_name
    for _table, _column, name in COVERED:
        schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name + '_like')}")


def create_covered(apps, schema_editor):
    quote = schema_editor.quote_name
    for table, column, name in COVERED:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} ({quote(column)})")
        if schema_editor.connection.vendor == "postgresql" and column == "agent_id":  # the varchar keys' twins
            schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {quote(name + '_like')} ON {quote(table)} "
                                  f"({quote(column)} varchar_pattern_ops)")


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0010_throttle_table'),
        ('opscore_sessions', '0006_pause_approvals'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_covered, create_covered)],
            state_operations=[
                migrations.AlterField(
                    model_name='quarantineevent',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='quarantine_events', to='agents.agent'),
                ),
                migrations.AlterField(
                    model_name='session',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='sessions', to='agents.agent'),
                ),
                migrations.AlterField(
                    model_name='task',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='tasks', to='agents.agent'),
                ),
                migrations.AlterField(
                    model_name='task',
                    name='session',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='tasks', to='opscore_sessions.session'),
                ),
                migrations.AlterField(
                    model_name='taskattempt',
                    name='agent',
                    field=models.ForeignKey(blank=True, db_index=False, help_text='Where the attempt went (empty: it never left the queue).', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='attempts', to='agents.agent'),
                ),
                migrations.AlterField(
                    model_name='taskattempt',
                    name='task',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='attempts', to='opscore_sessions.task'),
                ),
                migrations.AlterField(
                    model_name='taskevent',
                    name='session',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='opscore_sessions.session'),
                ),
                migrations.AlterField(
                    model_name='taskevent',
                    name='task',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='opscore_sessions.task'),
                ),
            ],
        ),
    ]
