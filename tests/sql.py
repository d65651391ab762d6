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
