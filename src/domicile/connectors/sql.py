"""SQL stores through SQLAlchemy Core: SQLite, PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL).

Driver exceptions are translated to domicile errors in one place,
:func:`translate`, so that callers see what failed, on which store, and what
to do.  Identifiers from the map are always SQLAlchemy objects (quoted by the
dialect), never formatted into SQL text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from domicile.connectors.dialects import dialect_for
from domicile.connectors.schema import refine_reflected
from domicile.errors import (
    DomicileError,
    PermanentConnectorError,
    TransientConnectorError,
)
from domicile.model import Store

# Drivers domicile installs (extras postgres / mysql); bare dialect names get them.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

_AUTH_WORDS = (
    "password authentication failed",
    "access denied",
    "authentication failed",
    'role "',
    "no password supplied",
)


# MySQL/MariaDB errors about a value, not the connection: retrying cannot help.
_MYSQL_DATA_ERRORS = {1048, 1062, 1264, 1292, 1366, 1406, 1451, 1452, 3140}


# A store that refuses the statement: PostgreSQL read_only_sql_transaction and
# insufficient_privilege; MySQL/MariaDB table/database access denied, --read-only
# server, read-only transaction, read-only table; SQLite SQLITE_READONLY*.
_REFUSED_CODES = {"25006", "42501", 1142, 1044, 1290, 1792, 1036}


def _refused(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    codes = {getattr(orig, "sqlstate", None), *getattr(orig, "args", ())[:1]}
    if codes & _REFUSED_CODES:
        return True
    return str(getattr(orig, "sqlite_errorname", "")).startswith("SQLITE_READONLY")


def _normalize_url(url: str) -> sa.URL:
    parsed = make_url(url)
    if parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=_DEFAULT_DRIVERS[parsed.drivername])
    return parsed


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


_OWNER = "domicile_store"
"""Attribute naming the store whose engine raised a driver error (see :func:`translate`)."""
_open = threading.local()  # per thread: the stores whose translate() blocks are open


def _tag_errors(engine: sa.Engine, store: Store) -> None:
    """Mark every driver error of *engine* with *store*, so it is reported under its name."""

    @sa.event.listens_for(engine, "handle_error")
    def _tag(context: sa.engine.ExceptionContext) -> None:
        if context.sqlalchemy_exception is not None:
            setattr(context.sqlalchemy_exception, _OWNER, store)


@contextmanager
def translate(store: Store, doing: str) -> Iterator[None]:
    """Turn driver exceptions raised while *doing* something into domicile errors.

    An error of another store's engine (a source's delete failing while its
    homes' transactions are open around it) is left to that store's own
    enclosing block, or else reported under that store's name.
    """
    stack: list[str] = _open.__dict__.setdefault("stores", [])
    stack.append(store.name)
    try:
        yield
    except DomicileError:
        raise
    except sa.exc.DBAPIError as exc:
        owner: Store | None = getattr(exc, _OWNER, None)
        if owner is not None and owner.name != store.name:
            if owner.name in stack[:-1]:
                raise  # the owner's block is open outside this one: it says what failed
            store = owner
        detail = _first_line(exc)
        lowered = detail.lower()
        where = f"store {store.name} ({store.display_url})"
        if _refused(exc):
            # retrying cannot help, and the server is up: a person must act
            raise PermanentConnectorError(
                f"{doing}: refused by the store: {detail}",
                where=where,
                hint="the database is read-only or its user lacks a privilege domicile needs "
                "(SELECT, INSERT, UPDATE, DELETE): make it writable, then resume the run",
            ) from exc
        if any(w in lowered for w in _AUTH_WORDS):
            raise PermanentConnectorError(
                f"{doing}: authentication failed: {detail}",
                where=where,
                hint="check the user and password in the store URL (use ${VAR} for secrets)",
            ) from exc
        if (
            isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
            or exc.connection_invalidated
        ):
            code = getattr(exc.orig, "args", (None,))[:1]
            if code and code[0] in _MYSQL_DATA_ERRORS:
                # a value the table refuses (PyMySQL raises some of these as
                # operational errors): the server is up, a retry gets the same answer
                raise PermanentConnectorError(
                    f"{doing}: the store refused a value: {detail}",
                    where=where,
                    hint="a column at this store does not accept a value being written "
                    "(type, length, character set or constraint): align its definition "
                    "with the source's, then resume the run",
                ) from exc
            if "does not exist" in lowered or "unknown database" in lowered:
                raise PermanentConnectorError(
                    f"{doing}: {detail}",
                    where=where,
                    hint="create the database or fix its name in the store URL",
                ) from exc
            raise TransientConnectorError(
                f"{doing}: {detail}",
                where=where,
                hint="is the server running and reachable at that host and port?",
            ) from exc
        raise PermanentConnectorError(f"{doing}: {detail}", where=where) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise PermanentConnectorError(
            f"{doing}: {_first_line(exc)}", where=f"store {store.name}"
        ) from exc
    finally:
        stack.pop()


class SqlStore:
    """One SQL store: an engine, reflection with a cache, and error translation."""

    def __init__(self, store: Store, connect_timeout: int = 5, pool_size: int = 5):
        if store.kind != "sql":
            raise ValueError(f"{store.name} is not a SQL store")
        self.store = store
        self.name = store.name
        self.url = _normalize_url(store.url)
        self.dialect = self.url.get_backend_name()
        self.behaviour = dialect_for(self.dialect)
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._engine: sa.Engine | None = None
        self._tables: dict[str, sa.Table] = {}
        self._metadata = sa.MetaData()
        self._stored: dict[str, sa.Table] = {}
        self._views: set[str] | None = None
        self._stored_metadata = sa.MetaData()
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The engine, created on first use."""
        if self._engine is None:
            self._engine = self._create_engine()
            _tag_errors(self._engine, self.store)
        return self._engine

    def _create_engine(self) -> sa.Engine:
        return self.behaviour.create_engine(
            self.url,
            dict(self.store.options),
            store=self.name,
            connect_timeout=self._connect_timeout,
            pool_size=self._pool_size,
        )

    def check(self) -> str:
        """Connect and return the server's version string."""
        with translate(self.store, "connecting"), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            info = conn.dialect.server_version_info or ()
            return f"{self.dialect} {'.'.join(str(p) for p in info)}".strip()

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            self._engine.dispose()

    # -- reflection ---------------------------------------------------------

    def table_names(self) -> list[str]:
        """Every table in the store's default schema."""
        with translate(self.store, "listing tables"):
            return sa.inspect(self.engine).get_table_names()

    def is_view(self, name: str) -> bool:
        """True when *name* is a view in the store's default schema (listed once)."""
        if self._views is None:
            with translate(self.store, f"looking for view {name}"):
                self._views = set(sa.inspect(self.engine).get_view_names())
        return name in self._views

    def has_table(self, name: str) -> bool:
        """True when the store has table *name*."""
        if name in self._tables:
            return True
        with translate(self.store, f"looking for table {name}"):
            return sa.inspect(self.engine).has_table(name)

    def table(self, name: str) -> sa.Table:
        """The reflected table *name* (cached); PermanentConnectorError if missing."""
        with self._lock:
            if name not in self._tables:
                if not self.has_table(name):
                    raise PermanentConnectorError(
                        f"table '{name}' does not exist",
                        where=f"store {self.name}",
                        hint="create it, fix the table name, or narrow the dataset with stores:",
                    )
                with translate(self.store, f"reading the definition of table {name}"):
                    table = sa.Table(name, self._metadata, autoload_with=self.engine)
                    # MySQL DOUBLE reflects as a rounding Decimal, MariaDB JSON as text
                    self._tables[name] = refine_reflected(table, self.engine)
            return self._tables[name]

    def is_unique(self, table: sa.Table, columns: tuple[str, ...]) -> bool:
        """True when the primary key, a unique constraint or a unique index is exactly *columns*.

        Read from the catalogue (not the cached reflection), since a unique
        index may be all that backs a declared key.
        """
        wanted = set(columns)
        if wanted and {c.name for c in table.primary_key.columns} == wanted:
            return True
        with translate(self.store, f"reading the indexes of table {table.name}"):
            insp = sa.inspect(self.engine)
            pk = insp.get_pk_constraint(table.name).get("constrained_columns") or []
            if pk and set(pk) == wanted:
                return True
            for uc in insp.get_unique_constraints(table.name):
                if set(uc.get("column_names") or []) == wanted:
                    return True
            for ix in insp.get_indexes(table.name):
                cols = ix.get("column_names") or []
                if ix.get("unique") and None not in cols and set(cols) == wanted:
                    return True
        return False

    def stored_table(self, name: str) -> sa.Table:
        """Table *name* with the types its values keep their stored form by.

        A copy of the reflected table (keys, constraints and the tables its
        foreign keys refer to, likewise) whose columns have the engine's
        :meth:`~domicile.connectors.dialects.Dialect.stored_type`, so a row
        read from it and written to another store's :meth:`stored_table` of
        the same engine keeps each value exactly as it was stored.
        """
        typed = self.table(name)
        with self._lock:
            if name not in self._stored:
                todo = [typed]
                while todo:
                    t = todo.pop()
                    if t.name in self._stored:
                        continue
                    copy = t.to_metadata(self._stored_metadata)
                    for column in copy.columns:
                        stored = self.behaviour.stored_type(t.c[column.name])
                        if stored is not None:
                            column.type = stored
                            column._reset_memoizations()
                    self._stored[t.name] = copy
                    todo += [fk.referred_table for fk in t.foreign_key_constraints]
            return self._stored[name]

    def forget(self, name: str) -> None:
        """Drop a cached reflection (after creating or altering a table)."""
        with self._lock:
            self._views = None
            table = self._tables.pop(name, None)
            if table is not None:
                self._metadata.remove(table)
            if name in self._stored_metadata.tables:  # fresh untyped copies on next use
                self._stored_metadata = sa.MetaData()
                self._stored.clear()

    @contextmanager
    def connect(self, doing: str) -> Iterator[sa.Connection]:
        """A connection with errors translated."""
        with translate(self.store, doing), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self, doing: str) -> Iterator[sa.Connection]:
        """A transaction with errors translated."""
        with translate(self.store, doing), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def begin_write(self, doing: str) -> Iterator[sa.Connection]:
        """A write transaction that reads what it will change under a write lock.

        SQLite takes the database write lock at BEGIN (IMMEDIATE), so that what
        the transaction reads cannot change before it writes; PostgreSQL and
        MySQL lock the rows the caller reads with SELECT ... FOR UPDATE.
        """
        with translate(self.store, doing), self.engine.connect() as raw:
            conn = raw.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn
