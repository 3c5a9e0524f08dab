"""Prebuilt Core statements run on the DBAPI cursor of the caller's SQLAlchemy transaction.

SQLAlchemy's ``Connection.execute`` spends 30-60 us of CPU per statement on work that is the same every time for a
statement built once (cache key, compiled-cache lookup, parameter construction, result wrapping); the driver's own
call is a few microseconds. ``Prepared`` compiles its statement once per dialect and keeps what SQLAlchemy would
derive on each call: the SQL text, the order of the parameters, the values bound in the statement itself, the bind
processors (JSON, DateTime on SQLite, the TypeDecorators of ``gateway.storage.tables``) and the result processors.
Each call then costs a dict merge, the processors, and the driver's ``execute``.

It runs inside the transaction the caller holds (``engine.begin()`` or ``engine.connect()``): commits and rollbacks
stay SQLAlchemy's. Rows come back as named tuples (attribute access, indexing, unpacking, ``_asdict()`` and
``_mapping``, like a ``Row``). What it does not handle itself goes through ``conn.execute``: an empty ``IN`` list,
column defaults that are not plain values, and parameters a dialect renders into the text per call. Listeners of the
engine's ``before_cursor_execute`` and ``after_cursor_execute`` events see these statements too (with no execution
context); the engine's echo does not. Driver errors are raised as SQLAlchemy raises them (``IntegrityError``...).

An ``IN`` list (an ``expanding`` bind parameter) is padded to the next power of two up to ``PADDED_IN_LIST_MAX``
items by repeating its last value, which leaves ``IN`` and ``NOT IN`` meaning the same. Without it the statement's
text would change with every list length, so each batch size would be a different statement to the driver and the
database: psycopg's query cache, PostgreSQL's prepared statements (psycopg prepares a text once it has run five
times on a connection) and the sqlite3 module's statement cache (128 texts a connection) would all miss. A longer
list keeps its own length. ``python -m bench.in_lists [postgresql]`` measures both ways.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Insert, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

_EXPANDED_SQL_CACHE = 64  # expanded texts kept per compiled statement (one per distinct IN-list length)
PADDED_IN_LIST_MAX = 256  # IN lists up to this length are padded to a power of two: 9 texts per list at most


def padded_length(length: int) -> int:
    """The length an IN list of ``length`` items is padded to: the next power of two, up to ``PADDED_IN_LIST_MAX``
    (a longer list is not padded)."""
    if length > PADDED_IN_LIST_MAX:
        return length
    return 1 << (length - 1).bit_length()


@dataclass(frozen=True)
class Executed:
    """What one execution gave: its rows (empty for a statement without results), rowcount and lastrowid."""

    rows: list[Any]
    rowcount: int
    lastrowid: Any = None

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class _Unsupported(Exception):
    """The statement or these parameters need SQLAlchemy's own execution path."""


class _Compiled:
    """One statement compiled for one dialect, with everything its executions share."""

    def __init__(self, statement: Executable, dialect: Dialect, column_keys: Sequence[str] | None,
                 pad_in_lists: bool, sqlite_index: tuple[str, str] | None = None) -> None:
        self.pad_in_lists = pad_in_lists
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            default = column.default if column in compiled.insert_prefetch else column.onupdate
            if default is None or not default.is_scalar:
                raise _Unsupported(f"column {column.key} has a default computed per execution")
        self.sql = compiled.string
        if sqlite_index is not None and dialect.name == "sqlite":
            table, index = sqlite_index
            if f"FROM {table} " not in self.sql:
                raise ValueError(f"{index}: the statement does not read {table}")
            self.sql = self.sql.replace(f"FROM {table} ", f"FROM {table} INDEXED BY {index} ", 1)
        self.positional = compiled.positional
        escaped = dict(compiled.escaped_bind_names or {})
        if compiled.positional:
            self.names = list(compiled.positiontup or ())
        else:  # in the order of the binds, each once (the order does not matter to a dict)
            self.names = [name for name in compiled.binds if f"%({escaped.get(name, name)})s" in self.sql
                          or f"__[POSTCOMPILE_{name}]" in self.sql]
        self.escaped = escaped
        self.defaults: dict[str, Any] = {}
        self.expanding: set[str] = set()
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            if name not in self.names and f"__[POSTCOMPILE_{name}]" not in self.sql:
                continue
            if bind.literal_execute:
                raise _Unsupported("a literal_execute parameter is rendered per execution")
            if bind.expanding:
                if name in escaped:
                    raise _Unsupported(f"the IN list {name!r} needs its name escaped")
                self.expanding.add(name)
            if not bind.required:
                self.defaults[name] = bind.effective_value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor
        for column in compiled.insert_prefetch:
            self.defaults[column.key] = column.default.arg  # type: ignore[union-attr]
        for column in compiled.update_prefetch:
            self.defaults[column.key] = column.onupdate.arg  # type: ignore[union-attr]
        self.expanding_names = list(dict.fromkeys(name for name in self.names if name in self.expanding))
        self.result_columns = [(entry[0], entry[3]) for entry in compiled._result_columns]
        self.row_type = _row_type([key for key, _ in self.result_columns]) if self.result_columns else None
        self.result_processors: list[tuple[int, Callable[[Any], Any]]] | None = None
        self.expanded_sql: dict[tuple[int, ...], str] = {}

    def parameters(self, given: Mapping[str, Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        values = {**self.defaults, **given} if self.defaults else dict(given)
        for name, processor in self.processors.items():
            value = values[name]
            if name in self.expanding:
                values[name] = [processor(element) for element in value]
            else:
                values[name] = processor(value)
        if not self.expanding:
            if self.positional:
                return self.sql, [values[name] for name in self.names]
            return self.sql, {self.escaped.get(name, name): values[name] for name in self.names}
        return self._expanded(values)

    def _expanded(self, values: dict[str, Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        lengths = tuple(len(values[name]) for name in self.expanding_names)
        if 0 in lengths:
            raise _Unsupported("an empty IN list is rendered per dialect")
        if self.pad_in_lists:
            padded = tuple(padded_length(length) for length in lengths)
            for name, length, target in zip(self.expanding_names, lengths, padded, strict=True):
                if target != length:
                    items = list(values[name])
                    values[name] = items + [items[-1]] * (target - length)
            lengths = padded
        sql = self.expanded_sql.get(lengths)
        if sql is None:
            sql = self.sql
            for name, length in zip(self.expanding_names, lengths, strict=True):
                marks = ", ".join(["?"] * length if self.positional else
                                  [f"%({name}_{index})s" for index in range(1, length + 1)])
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks)
            if len(self.expanded_sql) < _EXPANDED_SQL_CACHE:
                self.expanded_sql[lengths] = sql
        if self.positional:
            flat: list[Any] = []
            for name in self.names:
                if name in self.expanding:
                    flat.extend(values[name])
                else:
                    flat.append(values[name])
            return sql, flat
        named: dict[str, Any] = {}
        for name in self.names:
            if name in self.expanding:
                named.update({f"{name}_{index}": value for index, value in enumerate(values[name], start=1)})
            else:
                named[self.escaped.get(name, name)] = values[name]
        return sql, named

    def rows(self, cursor: Any, dialect: Dialect) -> list[Any]:
        fetched = cursor.fetchall()
        if self.row_type is None:
            return fetched
        processors = self.result_processors
        if processors is None:
            processors = self.result_processors = self._result_processors(cursor.description, dialect)
        if not processors:
            return [self.row_type._make(row) for row in fetched]
        rows = []
        for row in fetched:
            values = list(row)
            for index, processor in processors:
                values[index] = processor(values[index])
            rows.append(self.row_type._make(values))
        return rows

    def _result_processors(self, description: Sequence[Any],
                           dialect: Dialect) -> list[tuple[int, Callable[[Any], Any]]]:
        if len(description) != len(self.result_columns):
            raise RuntimeError(f"the cursor has {len(description)} columns, the statement {len(self.result_columns)}")
        processors = []
        for index, ((_, type_), column) in enumerate(zip(self.result_columns, description, strict=True)):
            processor = type_.dialect_impl(dialect).result_processor(dialect, column[1])
            if processor is not None:
                processors.append((index, processor))
        return processors


def _row_type(names: list[str]) -> type:
    """A named tuple of these columns that also answers ``_mapping``, as SQLAlchemy's ``Row`` does."""
    base = namedtuple("Row", names, rename=True)  # type: ignore[misc]
    return type("Row", (base,), {"__slots__": (), "_mapping": property(lambda row: row._asdict())})


class Prepared:
    """A Core statement (select, insert, update or delete with bind parameters) run without SQLAlchemy's
    per-execution work; see the module's docstring for what it covers and what falls back to ``conn.execute``.

    An insert or update with no ``values()`` of its own is compiled for the parameter names of its first
    execution, like SQLAlchemy does: executions with other names compile again (once each). ``pad_in_lists=False``
    renders each IN list at its own length (see the module's docstring). ``sqlite_index=(table, index)`` reads the
    first ``FROM table`` through that index on SQLite (``INDEXED BY``, which SQLAlchemy's SQLite dialect does not
    render from a hint): SQLite plans without statistics, since the gateway never runs ANALYZE.
    """

    def __init__(self, statement: Executable, *, pad_in_lists: bool = True,
                 sqlite_index: tuple[str, str] | None = None) -> None:
        self.statement = statement
        self.pad_in_lists = pad_in_lists
        self.sqlite_index = sqlite_index  # (table, index): on SQLite, the table is read through that index
        self._by_columns = isinstance(statement, Insert | Update)
        # by dialect (one per engine; weak, so an engine's end frees them), then by parameter names
        self._compiled: WeakKeyDictionary[Dialect, dict[tuple[str, ...] | None, _Compiled | None]] = \
            WeakKeyDictionary()

    def execute(self, conn: Connection, parameters: Mapping[str, Any] | None = None) -> Executed:
        given = parameters or {}
        compiled = self._for(conn.dialect, given)
        if compiled is not None:
            try:
                sql, values = compiled.parameters(given)
            except _Unsupported:
                pass
            else:
                cursor = self._cursor(conn)
                try:
                    _run(conn, cursor, sql, values, many=False)
                    rows = compiled.rows(cursor, conn.dialect) if cursor.description is not None else []
                    return Executed(rows, cursor.rowcount, getattr(cursor, "lastrowid", None))
                finally:
                    cursor.close()
        result = conn.execute(self.statement, dict(given))
        rows = list(result) if result.returns_rows else []
        return Executed(rows, result.rowcount, getattr(result, "lastrowid", None))

    def execute_many(self, conn: Connection, parameter_list: Sequence[Mapping[str, Any]]) -> int:
        """Run the statement once per parameter set (the driver's executemany); returns the rowcount the driver
        reports (the rows changed; psycopg says -1 for an insert)."""
        if not parameter_list:
            return 0
        compiled = self._for(conn.dialect, parameter_list[0])
        if compiled is not None and not compiled.expanding and compiled.row_type is None:
            batch = [compiled.parameters(given)[1] for given in parameter_list]
            cursor = self._cursor(conn)
            try:
                _run(conn, cursor, compiled.sql, batch, many=True)
                return int(cursor.rowcount)
            finally:
                cursor.close()
        return int(conn.execute(self.statement, [dict(given) for given in parameter_list]).rowcount)

    def all(self, conn: Connection, parameters: Mapping[str, Any] | None = None) -> list[Any]:
        return self.execute(conn, parameters).rows

    def first(self, conn: Connection, parameters: Mapping[str, Any] | None = None) -> Any | None:
        return self.execute(conn, parameters).first()

    def scalar(self, conn: Connection, parameters: Mapping[str, Any] | None = None) -> Any:
        return self.execute(conn, parameters).scalar()

    def scalars(self, conn: Connection, parameters: Mapping[str, Any] | None = None) -> list[Any]:
        return self.execute(conn, parameters).scalars()

    def _for(self, dialect: Dialect, given: Mapping[str, Any]) -> _Compiled | None:
        by_columns = self._compiled.get(dialect)
        if by_columns is None:
            by_columns = self._compiled[dialect] = {}
        columns = tuple(sorted(given)) if self._by_columns else None
        try:
            return by_columns[columns]
        except KeyError:
            pass
        try:
            compiled: _Compiled | None = _Compiled(self.statement, dialect, columns, self.pad_in_lists,
                                                   self.sqlite_index)
        except _Unsupported:
            compiled = None
        by_columns[columns] = compiled
        return compiled

    @staticmethod
    def _cursor(conn: Connection) -> Any:
        if not conn.in_transaction():
            conn.begin()  # what conn.execute's autobegin does: SQLAlchemy's begin (BEGIN IMMEDIATE on SQLite)
        return conn.connection.cursor()


def _run(conn: Connection, cursor: Any, sql: str, parameters: Any, *, many: bool) -> None:
    """The driver's execute (or executemany), between the cursor events as SQLAlchemy fires them."""
    observed = conn._has_events or conn.engine._has_events
    if observed:
        for listener in conn.dispatch.before_cursor_execute:
            sql, parameters = listener(conn, cursor, sql, parameters, None, many)
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
    except conn.dialect.loaded_dbapi.Error as error:  # as SQLAlchemy raises it: IntegrityError and the like
        # hide_parameters as the engine says (gateway.storage.db sets it): customers' data stays out of errors
        raise DBAPIError.instance(sql, parameters, error, conn.dialect.loaded_dbapi.Error,
                                  hide_parameters=conn.engine.hide_parameters, dialect=conn.dialect,
                                  ismulti=many) from error
    if observed:
        for listener in conn.dispatch.after_cursor_execute:
            listener(conn, cursor, sql, parameters, None, many)
