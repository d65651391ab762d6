"""ORM reads, UPDATEs and INSERTs compiled to SQL once per process, for the engine's hot paths.

Building and compiling a queryset costs Django 0.5-2 ms of CPU (a three-table locking read
with an annotation is the dear end), several times per workflow step, while PostgreSQL runs
the same statements in a fraction of that. A `Statement` keeps the queryset as the one
place its rules are written, and pays for building and compiling it once per process and
database:

    CLAIM = Statement(lambda task_id: Task.objects.select_related("agent").filter(pk=task_id)[:1])
    task = CLAIM.first(task_id=task.pk)

The first call builds the queryset with a sentinel for each named value (of the value's
type), compiles it, and notes where each sentinel sits among the SQL's parameters (twice,
with other sentinels, so that a constant equal to one is never taken for a value).
Later calls run that SQL with the new values in those places, through Django's cursor (so
query logging, execute wrappers and error wrapping apply), and turn the rows into exactly
what the queryset gives: model instances with their select_related rows and annotations, or
values_list tuples. With opscore_site.postgresql the cursor is its prepared one (server-side
parameters, the statement parsed and planned once per connection: the claim's two reads
cost PostgreSQL about 0.3 ms of planning each).

What cannot be cached this way fails on the first call, never runs wrong:
- a value Django transforms on its way to SQL (a LIKE pattern, a list spread over IN, a model
  instance for its key, a value the builder computes from another) is not found among the
  parameters: `ImproperlyConfigured`, naming it. Pass the computed value itself instead;
- None is refused (`ValueError`): a filter on None compiles to IS NULL, which another value
  cannot take the place of. A caller with an optional value keeps two statements;
- a builder whose SQL changes with its values (a slice's LIMIT is written into the SQL);
- an integer beyond its field's range (Django compiles such a lookup to "all" or "none") runs
  the queryset itself.

`Update` does the same for the compare-and-set UPDATEs of the engine's transitions: the rows
a builder selects, the changed fields named at each call (a statement per set of names).
`Insert` does it for the rows a step creates (its task, attempt and events; a trigger's
session): Django's own INSERT, compiled once per number of rows.

Only on PostgreSQL (the demo's SQLite adapts values on their way, and is not a hot path): on
another database every call builds and runs the queryset itself.
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import QuerySet, signals
from django.db.models.sql import InsertQuery, UpdateQuery


def prepared_cursor(connection: Any) -> Any:
    """The connection's prepared cursor (opscore_site.postgresql: each statement parsed and
    planned once per connection), else its own cursor (Django's stock backends, SQLite)."""
    return getattr(connection, "prepared_cursor", connection.cursor)()


class _Slot:
    """A parameter position filled from the named value at each call, wrapped as Django wrapped
    it (an integer field's value goes as psycopg's Int4 or Int8, say: `wrap`, else None)."""

    __slots__ = ("name", "wrap")

    def __init__(self, name: str, wrap: type | None) -> None:
        self.name, self.wrap = name, wrap

    def value(self, values: dict[str, Any]) -> Any:
        value = values[self.name]
        if self.wrap is None:
            return value
        if not -_INT_LIMITS[self.wrap.__name__] <= value < _INT_LIMITS[self.wrap.__name__]:
            raise _Unbound  # beyond the field's range, where Django's lookup compiles to something else
        return self.wrap(value)


_INT_LIMITS = {"Int2": 2**15, "Int4": 2**31, "Int8": 2**63}  # psycopg's integer wrappers


class _Unbound(Exception):
    """A value the compiled SQL cannot take: the queryset runs itself."""


class _Compiled:
    __slots__ = ("queryset", "compiler", "sql", "slots", "locks", "converters")

    def __init__(self, queryset: QuerySet, compiler: Any, sql: str, slots: list) -> None:
        self.queryset, self.compiler, self.sql, self.slots = queryset, compiler, sql, slots
        self.locks = queryset.query.select_for_update
        # The row converters of the select list (a JSON field's loads, say), which the compiler would
        # work out again at every call. PostgreSQL has no backend converters: a field's own do not
        # depend on the connection they were found with.
        self.converters = compiler.get_converters([s[0] for s in compiler.select[0:compiler.col_count]])


def _sentinel(name: str, value: Any) -> Any:
    """A value of `value`'s type that no constant of a query will equal."""
    if isinstance(value, bool):
        raise ImproperlyConfigured(f"statement value {name!r}: a bool cannot be told from a constant; build it in")
    if isinstance(value, str):
        return f"\x1estatement-{name}-{uuid.uuid4().hex}"
    if isinstance(value, uuid.UUID):
        return uuid.uuid4()
    if isinstance(value, datetime):
        return datetime(1901, 1, 1, tzinfo=value.tzinfo) + timedelta(microseconds=random.getrandbits(48))
    if isinstance(value, int):  # within a small integer field's range (Django drops a lookup beyond it)
        return random.randrange(1000, 32000)
    raise ImproperlyConfigured(f"statement value {name!r}: no sentinel for a {type(value).__name__}")


def _holds(param: Any, sentinel: Any) -> bool:
    return isinstance(param, type(sentinel)) and param == sentinel


def _sentinel_pair(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two sentinels a name: SQL compiled with each shows which positions are the name's."""
    return ({name: _sentinel(name, value) for name, value in values.items()},
            {name: _sentinel(name, value) for name, value in values.items()})


def _refuse_none(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None:
            raise ValueError(f"statement value {name!r} is None: use a statement that filters on NULL")


def _slots(compiled: tuple[str, tuple], other: tuple[str, tuple], sentinels: dict[str, Any],
           others: dict[str, Any]) -> list:
    """The (SQL, parameters) compiled with `sentinels` and with `others`: a position is a name's
    when it holds that name's sentinel both times (a constant that happens to equal one is not)."""
    (sql, params), (other_sql, other_params) = compiled, other
    if other_sql != sql or len(other_params) != len(params):
        raise ImproperlyConfigured("statement: its SQL depends on the values; give each shape a statement")
    slots: list = []
    found = set()
    for param, other_param in zip(params, other_params):
        name = next((n for n in sentinels if _holds(param, sentinels[n]) and _holds(other_param, others[n])), None)
        if name is None:
            slots.append(param)
            continue
        wrap = None if type(param) is type(sentinels[name]) else type(param)
        if wrap is not None and wrap.__name__ not in _INT_LIMITS:
            raise ImproperlyConfigured(f"statement value {name!r} reaches the SQL as a {wrap.__name__}")
        slots.append(_Slot(name, wrap))
        found.add(name)
    if missing := sorted(sentinels.keys() - found):
        raise ImproperlyConfigured(
            f"statement values {missing} do not reach the SQL as given (transformed or computed on "
            f"the way); pass the value the SQL uses")
    return slots


class Statement:
    """A read built by `build(**values)` on database `using`, compiled once; see the module docstring."""

    def __init__(self, build: Callable[..., QuerySet], *, using: str = DEFAULT_DB_ALIAS) -> None:
        self._build = build
        self._using = using
        self._compiled: _Compiled | None = None
        self._lock = threading.Lock()

    def rows(self, **values: Any) -> list:
        """What `list(queryset)` gives for these values."""
        _refuse_none(values)
        if connections[self._using].vendor != "postgresql":
            return list(self._build(**values))
        compiled = self._compiled or self._compile(values)
        if compiled.locks and not connections[self._using].in_atomic_block:  # as Django's own check
            raise transaction.TransactionManagementError(
                "select_for_update cannot be used outside of a transaction.")
        try:
            bound = self._bound(compiled, self._using, values)
        except _Unbound:
            return list(self._build(**values))
        return list(bound)

    def first(self, **values: Any) -> Any:
        """The first row, or None (the queryset should be ordered and sliced to one row)."""
        rows = self.rows(**values)
        return rows[0] if rows else None

    def _compile(self, values: dict[str, Any]) -> _Compiled:
        with self._lock:
            if self._compiled is not None:
                return self._compiled
            sentinels, others = _sentinel_pair(values)
            queryset = self._build(**sentinels)
            compiler = queryset.query.get_compiler(using=self._using)
            sql, params = compiler.as_sql()
            other = self._build(**others).query.get_compiler(using=self._using).as_sql()
            self._compiled = _Compiled(queryset, compiler, sql, _slots((sql, params), other, sentinels, others))
            return self._compiled

    @staticmethod
    def _bound(compiled: _Compiled, db: str, values: dict[str, Any]) -> QuerySet:
        """A copy of the compiled queryset, to be iterated once, whose compiler answers with the
        cached SQL and these values (Django's own iterable turns the rows into its results)."""
        params = tuple(slot.value(values) if isinstance(slot, _Slot) else slot for slot in compiled.slots)
        compiler = copy.copy(compiled.compiler)  # select, klass_info, col_count: set by the first compile
        connection = connections[db]  # this thread's connection
        compiler.connection = _Prepared(connection) if hasattr(connection, "prepared_cursor") else connection
        sql, converters, count = compiled.sql, compiled.converters, compiled.compiler.col_count
        compiler.as_sql = lambda *args, **kwargs: (sql, params)
        compiler.get_converters = lambda expressions: (
            converters if len(expressions) == count else type(compiler).get_converters(compiler, expressions))
        queryset = object.__new__(type(compiled.queryset))
        queryset.__dict__.update(compiled.queryset.__dict__, _result_cache=None,
                                 _query=_BoundQuery(compiled.queryset.query, compiler))
        return queryset


class _Prepared:
    """The connection, but for the cursor it gives: a prepared one (opscore_site.postgresql), so
    that PostgreSQL parses and plans the statement once per connection, not at every call."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def cursor(self) -> Any:
        return self._connection.prepared_cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _BoundQuery:
    """The compiled query, but for the compiler it hands out (shared state stays untouched)."""

    def __init__(self, query: Any, compiler: Any) -> None:
        self._query, self._compiler = query, compiler

    def get_compiler(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._query, name)


class Update:
    """An UPDATE of the rows `build(**where)` selects (a Statement's builder), compiled once per
    tuple of changed fields, as `queryset.update(**changes)` compiles it.

        MOVE = Update(lambda pk, old: Task.objects.filter(pk=pk, status=old))
        changed = MOVE.run(where={"pk": task.pk, "old": "queued"}, changes={"status": "dispatched"})

    The first call of a shape compiles the UPDATE query that `update()` would run (nothing is
    sent), with two sentinels a `where` value as a Statement does.
    Each change is then sent as Django sends it (`field.get_db_prep_save`), None included;
    an expression or a model instance among the changes goes through `update()` itself.
    Returns the number of rows changed.
    """

    def __init__(self, build: Callable[..., QuerySet], *, using: str = DEFAULT_DB_ALIAS) -> None:
        self._build = build
        self._using = using
        self._compiled: dict[tuple, tuple[str, list, list]] = {}
        self._lock = threading.Lock()

    def run(self, *, where: dict[str, Any], changes: dict[str, Any]) -> int:
        _refuse_none(where)
        connection = connections[self._using]
        if connection.vendor != "postgresql" or any(
                hasattr(v, "resolve_expression") or hasattr(v, "prepare_database_save") for v in changes.values()):
            return self._build(**where).update(**changes)
        shape = tuple(changes)
        compiled = self._compiled.get(shape) or self._compile(shape, where, changes)
        sql, fields, slots = compiled
        try:
            params = (*(field.get_db_prep_save(changes[name], connection=connection) for name, field in fields),
                      *(slot.value(where) if isinstance(slot, _Slot) else slot for slot in slots))
        except _Unbound:
            return self._build(**where).update(**changes)
        with transaction.mark_for_rollback_on_error(using=self._using), prepared_cursor(connection) as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def _compile(self, shape: tuple, where: dict[str, Any], changes: dict[str, Any]) -> tuple[str, list, list]:
        with self._lock:
            if shape in self._compiled:
                return self._compiled[shape]
            sentinels, others = _sentinel_pair(where)
            sql, params = self._sql_of(sentinels, changes)
            other_sql, other_params = self._sql_of(others, changes)
            model = self._build(**sentinels).model
            connection = connections[self._using]
            fields = [(name, model._meta.get_field(name)) for name in shape]
            setting = ", ".join(f"{connection.ops.quote_name(field.column)} = %s" for _, field in fields)
            if not sql.startswith(f"UPDATE {connection.ops.quote_name(model._meta.db_table)} SET {setting} WHERE "):
                raise ImproperlyConfigured(f"statement: an UPDATE not of the expected shape: {sql[:200]}")
            n = len(fields)
            compiled = (sql, fields, _slots((sql, params[n:]), (other_sql, other_params[n:]), sentinels, others))
            self._compiled[shape] = compiled
            return compiled

    def _sql_of(self, where: dict[str, Any], changes: dict[str, Any]) -> tuple[str, tuple]:
        """The SQL and parameters `queryset.update(**changes)` would send for these values (its
        query, compiled; nothing reaches the database or its query log)."""
        query = self._build(**where).query.chain(UpdateQuery)
        query.add_update_values(changes)
        if query.related_updates or query.order_by:
            raise ImproperlyConfigured("statement: an UPDATE of parent tables or with an ordering is not cached")
        query.clear_select_clause()
        return query.get_compiler(self._using).as_sql()


class Insert:
    """INSERTs of new rows of `model`, compiled once per number of rows, as `Model.save()` and
    `bulk_create()` compile them: the SQL is Django's own, only its building is cached.

        EVENTS = Insert(TaskEvent)
        EVENTS.save(*events)  # instances built by the caller: pk and returned fields assigned

    `save(*objs)` does what `obj.save(force_insert=True)` does for each (related fields checked,
    `pre_save` run: a default or auto_now is taken then, the primary key or returned fields set on
    the instance, `_state` marked saved), in one statement on the prepared cursor. Each value is
    sent as Django sends it (`field.get_db_prep_save`); the first call of a shape checks that the
    parameters it builds are those of Django's compiler, and refuses (`ImproperlyConfigured`) a
    model it cannot compile this way (parents, database defaults, generated fields, a returned
    field that Django converts on its way back).
    An expression or a database default among the values, a pre_save or post_save receiver
    connected for the model, or another database than PostgreSQL: each instance is saved by
    `save(force_insert=True)` itself.
    """

    def __init__(self, model: type, *, using: str = DEFAULT_DB_ALIAS) -> None:
        meta = model._meta
        if meta.parents or any(f.generated or f.has_db_default() for f in meta.local_concrete_fields):
            raise ImproperlyConfigured(f"Insert({model.__name__}): parents, database defaults or generated "
                                       f"fields are not compiled; use save()")
        self._model = model
        self._using = using
        self._compiled: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def save(self, *objs: Any) -> None:
        if not objs:
            return
        connection = connections[self._using]
        meta = self._model._meta
        if connection.vendor != "postgresql" or signals.pre_save.has_listeners(self._model) or \
                signals.post_save.has_listeners(self._model):
            return self._saved_one_by_one(objs)
        pk_set = [obj._is_pk_set(meta) for obj in objs]
        if any(pk_set) and not all(pk_set):
            return self._saved_one_by_one(objs)
        shape = (len(objs), pk_set[0])
        for obj in objs:
            obj._prepare_related_fields_for_save(operation_name="save")
        compiled = self._compiled.get(shape)
        fields = compiled[1] if compiled else self._fields(pk_set[0])
        rows = []
        for obj in objs:
            row = []
            for field in fields:
                value = field.pre_save(obj, add=True)
                if hasattr(value, "resolve_expression"):  # an expression (a DatabaseDefault among them)
                    return self._saved_one_by_one(objs)
                row.append(field.get_db_prep_save(value, connection=connection))
            rows.append(row)
        if compiled is None:
            compiled = self._compile(shape, objs, fields, rows)
        sql, fields, unnest, returning = compiled
        params = _insert_params(rows, unnest)
        with transaction.mark_for_rollback_on_error(using=self._using), prepared_cursor(connection) as cursor:
            cursor.execute(sql, params)
            returned = cursor.fetchall() if returning else ()
        for obj, values in itertools.zip_longest(objs, returned, fillvalue=()):
            for field, value in zip(returning, values):
                setattr(obj, field.attname, value)
            obj._state.adding, obj._state.db = False, self._using

    def _saved_one_by_one(self, objs: tuple) -> None:
        for obj in objs:
            obj.save(force_insert=True, using=self._using)

    def _fields(self, pk_set: bool) -> list:
        meta = self._model._meta
        return [f for f in meta.local_concrete_fields if pk_set or f is not meta.auto_field]

    def _compile(self, shape: tuple, objs: tuple, fields: list, rows: list) -> tuple:
        """Django's compiler, run once for this shape: its SQL, and the check that the parameters
        built at each call are the ones it builds."""
        with self._lock:
            if shape in self._compiled:
                return self._compiled[shape]
            meta = self._model._meta
            returning = list(meta.db_returning_fields)
            query = InsertQuery(self._model)
            query.insert_values(fields, objs, raw=True)  # the values pre_save gave (an auto_now: once)
            compiler = query.get_compiler(using=self._using)
            compiler.returning_fields = returning
            [(sql, django_params)] = compiler.as_sql()
            unnest = "UNNEST(" in sql and len(objs) > 1
            params = _insert_params(rows, unnest)
            if compiler.returning_params or not _same_params(params, django_params):
                raise ImproperlyConfigured(f"Insert({self._model.__name__}): Django compiles its parameters "
                                           f"otherwise: {sql[:200]}")
            if compiler.get_converters([f.get_col(meta.db_table) for f in returning]):
                raise ImproperlyConfigured(f"Insert({self._model.__name__}): a returned field is converted on "
                                           f"its way back; use save()")
            compiled = (sql, fields, unnest, returning)
            self._compiled[shape] = compiled
            return compiled


def _insert_params(rows: list, unnest: bool) -> tuple:
    """An INSERT's parameters as Django's compiler lays them out: row after row in VALUES, or one
    array a column for its UNNEST form (several rows on PostgreSQL)."""
    return tuple(map(list, zip(*rows))) if unnest else tuple(value for row in rows for value in row)


def _same_params(mine: Any, django: Any) -> bool:
    """The same parameters, adapter wrappers (psycopg's Jsonb) compared by what they wrap."""
    if isinstance(mine, (list, tuple)):
        return isinstance(django, (list, tuple)) and len(mine) == len(django) and \
            all(_same_params(a, b) for a, b in zip(mine, django))
    if type(mine) is not type(django):
        return False
    return mine == django or (hasattr(mine, "obj") and mine.obj == django.obj)
