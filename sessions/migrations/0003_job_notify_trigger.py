"""PostgreSQL only: every job row inserted into django-q2's queue table sends
pg_notify('django_q_ormq', <queue name>) in the inserting transaction (delivered at commit,
never for a rollback), which wakes `sessions.broker.ListenNotifyBroker`. SQLite gets nothing."""

from django.db import migrations

FUNCTION = "opscore_q_job_notify"
CHANNEL = "django_q_ormq"  # sessions.broker.CHANNEL, written out: a migration never changes


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_q", "OrmQ")._meta.db_table)
    schema_editor.execute(
        f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', NEW.key); RETURN NULL; END $$"
    )
    schema_editor.execute(
        f"CREATE TRIGGER {FUNCTION} AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
    )


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_q", "OrmQ")._meta.db_table)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {FUNCTION} ON {table}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")


class Migration(migrations.Migration):

    dependencies = [
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("opscore_sessions", "0002_task_status_finished_idx"),
    ]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
