"""The SQL of a captured query (django_assert_num_queries), whichever cursor ran it."""

import ast

_PREPARED = "QUERY = "  # Django's text for a statement sent with server-side parameters


def sql_of(query: dict) -> str:
    """`query["sql"]` without Django's `QUERY = '...' - PARAMS = (...)` wrapping, which a prepared
    cursor's statements get (opscore_site.postgresql; the engine's compiled reads use it)."""
    text = query["sql"]
    if not text.startswith(_PREPARED):
        return text
    quoted, _, _ = text[len(_PREPARED):].rpartition(" - PARAMS = ")
    return ast.literal_eval(quoted)


def unprepared(queries: list[dict]) -> list[str]:
    """The captured statements that did not go through the prepared cursor, transaction control
    (savepoints, BEGIN and COMMIT) aside: an engine statement compiled once per process
    (opscore_site/statements.py) that fell back to the ORM shows up here."""
    control = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "BEGIN", "COMMIT")
    return [q["sql"][:120] for q in queries
            if not q["sql"].startswith(_PREPARED) and not q["sql"].lstrip().upper().startswith(control)]
