"""The API throttle's counters (opscore_site/throttle.py): one row per counter, one upsert per request.

Created here, with the schema, like the cache table (0002): every database that is migrated,
including the test database, has it. On PostgreSQL it is UNLOGGED, with room for HOT updates.
"""

from django.db import migrations

from opscore_site import throttle


def create_table(apps, schema_editor):
    for sql in throttle.create_table_sql(schema_editor.connection.vendor):
        schema_editor.execute(sql)


def drop_table(apps, schema_editor):
    for sql in throttle.drop_table_sql():
        schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("agents", "0009_apikey_expires_at")]

    operations = [migrations.RunPython(create_table, drop_table)]
