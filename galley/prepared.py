"""Querysets compiled to SQL once per process, and inserts written without the ORM's compiler.

Django compiles a queryset each time it runs it: 0.3 to 1.4 ms of CPU for the harness's reads of
the session row and its new events, several times a step, against 0.01 ms for the statement
itself. The hot reads of a fixed shape are built here once, with marker values where the real
ones go, and then run as raw SQL with the real values (`Model.objects.raw`, which still converts
each model field from the database as the queryset would). Only plain lookups may take a marker:
one the ORM would transform (an `__in` list, a JSON key) is not found in the compiled parameters,
and building fails loudly instead of running a wrong statement.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Model, QuerySet
from django.db.models.fields import AutoFieldMixin

# Markers: integers, so integer fields take them; text fields see them as their str().
_MARKER_BASE = -7_310_000_000_000_000_000
_lock = threading.Lock()


@dataclass(frozen=True)
class _Compiled:
    model: type[Model]
    sql: str
    slots: list[tuple[bool, Any]]  # (True, index of the caller's value) or (False, a constant)

    def params(self, args: tuple[Any, ...]) -> list[Any]:
        return [args[value] if is_marker else value for is_marker, value in self.slots]


_compiled: dict[tuple[str, str], _Compiled] = {}


def _compile(key: str, build: Callable[..., QuerySet[Any]], arity: int) -> _Compiled:
    cache_key = (key, connection.vendor)
    found = _compiled.get(cache_key)
    if found is not None:
        return found
    markers = [_MARKER_BASE - index for index in range(arity)]
    queryset = build(*markers)
    sql, params = queryset.query.sql_with_params()
    slots: list[tuple[bool, Any]] = []
    for value in params:
        position = next((i for i, m in enumerate(markers) if value in (m, str(m))), None)
        slots.append((True, position) if position is not None else (False, value))
    if {value for is_marker, value in slots if is_marker} != set(range(arity)):
        raise ValueError(f"prepared query {key!r}: a value did not reach the statement as a parameter")
    compiled = _Compiled(queryset.model, sql, slots)
    with _lock:
        _compiled[cache_key] = compiled
    return compiled


def prepared_rows(key: str, build: Callable[..., QuerySet[Any]], *args: Any) -> list[Any]:
    """The model instances `build(*args)` would return; annotations become plain attributes with
    the database's own value (a JSON annotation is text on SQLite: decode it yourself)."""
    compiled = _compile(key, build, len(args))
    return list(compiled.model._default_manager.raw(compiled.sql, compiled.params(args)))


def prepared_exists(key: str, build: Callable[..., QuerySet[Any]], *args: Any) -> bool:
    """Whether `build(*args)` has a row (let build slice it to one)."""
    compiled = _compile(key, build, len(args))
    with connection.cursor() as cursor:
        cursor.execute(compiled.sql, compiled.params(args))
        return cursor.fetchone() is not None


def rows_insert(rows: list[Model]) -> None:
    """INSERT new instances of one model in one statement per 500 rows, like bulk_create but
    without compiling it each time (an auto-increment id is left to the database and not read
    back). Field defaults and auto_now_add apply as in save()."""
    if not rows:
        return
    model = type(rows[0])
    db = transaction.get_connection()
    fields = [f for f in model._meta.concrete_fields if not isinstance(f, AutoFieldMixin)]
    columns = ", ".join(db.ops.quote_name(f.column) for f in fields)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    table = db.ops.quote_name(model._meta.db_table)
    for start in range(0, len(rows), 500):  # well under SQLite's and PostgreSQL's parameter limits
        chunk = rows[start : start + 500]
        params = [f.get_db_prep_save(f.pre_save(row, True), db) for row in chunk for f in fields]
        with db.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))}", params)
        for row in chunk:
            row._state.adding = False
            row._state.db = db.alias
