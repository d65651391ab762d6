"""State reports update the agent row in place (issue 12).

- No index on `agent.state` or `agent.last_seen_at`: every report changes them, and an
  update that changes an indexed column can never be HOT (a heap-only tuple, written
  without touching the indexes and pruned within its page).
- The history's own `agent_id` index (and its `_like` twin on PostgreSQL) goes:
  `(agent_id, -received_at)` serves every lookup by agent, including the cascade.
- PostgreSQL only (SQLite is left as it is): free space in each page of the agent table
  for the new row versions (fillfactor), and autovacuum on a fixed number of dead rows
  rather than a fraction of a table that is small and rewritten all day.
"""

import django.db.models.deletion
from django.db import migrations, models

AGENT_STORAGE = {
    "fillfactor": "50",  # room for HOT versions: rows are small and few, space is cheap
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "2000",
    "autovacuum_vacuum_cost_delay": "0",  # a small table: vacuum it at once, never throttled
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "5000",
}


def _alter_storage(schema_editor, reset: bool) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name("agents_agent")
    if reset:
        schema_editor.execute(f"ALTER TABLE {table} RESET ({', '.join(AGENT_STORAGE)})")
    else:
        options = ", ".join(f"{name} = {value}" for name, value in AGENT_STORAGE.items())
        schema_editor.execute(f"ALTER TABLE {table} SET ({options})")


def set_storage(apps, schema_editor):
    _alter_storage(schema_editor, reset=False)


def reset_storage(apps, schema_editor):
    _alter_storage(schema_editor, reset=True)


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0006_agent_id_validators'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='agent',
            name='agent_state_idx',
        ),
        migrations.RemoveIndex(
            model_name='agent',
            name='agent_last_seen_idx',
        ),
        migrations.AlterField(
            model_name='agentstate',
            name='agent',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='state_history', to='agents.agent'),
        ),
        migrations.RunPython(set_storage, reset_storage),
    ]
