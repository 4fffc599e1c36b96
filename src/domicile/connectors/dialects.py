"""One class per engine family: how domicile opens, bounds and queries each kind of database.

Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB in how
domicile talks to a store lives here (type translation between engines lives
in :mod:`domicile.connectors.schema`, identity in
:mod:`domicile.connectors.identity`): the engine's options, the session's
limits and name, whether rows can be locked, and the fastest ``IN`` for keys.
Nothing outside ``connectors/`` asks which engine it talks to; it asks the
store's :class:`Dialect`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from domicile.connectors.sql_types import ArrayText, AsText, register_sqlite_sha256
from domicile.errors import PermanentConnectorError

APPLICATION_NAME = "domicile"
LOCK_TIMEOUT_S = 30  # a row lock the application holds longer fails the step (retried)
STATEMENT_TIMEOUT_S = 3600  # no statement of domicile's runs longer than this
# A network that goes dead (no ACK, no keepalive answer) breaks the connection in
# about a minute: TCP keepalives after 30 s idle, 3 probes 10 s apart, and
# unacknowledged data given up after 60 s (PostgreSQL's tcp_user_timeout).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT, TCP_USER_TIMEOUT_S = 30, 10, 3, 60
# A peer that keeps the connection open but stops answering (a hung proxy or
# middlebox): the client waits at most the statement limit plus this margin for
# an answer (the server would have cancelled any statement of its own by then).
READ_MARGIN_S = 30


class Dialect:
    """The behaviour shared by every engine; subclasses override what differs."""

    family: ClassVar[str] = "generic"
    file_based: ClassVar[bool] = False
    """True when the database is a local file (its URL's database is a path)."""
    default_port: ClassVar[int | None] = None
    locks_rows: ClassVar[bool] = True
    """True when ``SELECT ... FOR UPDATE`` locks rows (SQLite locks the database instead)."""
    key_chunk: ClassVar[int] = 500
    """Key values per look-up statement: under the engine's parameter limit."""
    placeholder: ClassVar[str] = "%s"
    """The driver's parameter marker (positional)."""
    moves_stored_form: ClassVar[bool] = False
    digests_on_read: ClassVar[bool] = True
    """True when the read of a source page asks the engine for each row's digest:
    a server computes it on its own CPU, beside the client's work."""
    """True when rows between two stores of this family move in their stored form
    where a typed round trip would rewrite them (see :meth:`stored_type`)."""
    display_name: ClassVar[str] = "SQL database"
    remnants: ClassVar[tuple[str, ...]] = (
        "Deleted rows may stay in the database's files, logs and caches until the engine "
        "reuses that space; domicile knows no engine-specific detail for this database.",
    )
    """What may remain on disk of rows deleted here that domicile cannot erase (the
    report lists it for every store a run deleted from)."""

    def stored_type(self, column: sa.Column[Any]) -> sa.types.TypeEngine[Any] | None:
        """The type *column* is read and written with between two stores of this family,
        so that its values keep their stored form; None: its own type keeps them."""
        return None

    def create_engine(
        self,
        url: sa.URL,
        options: dict[str, Any],
        *,
        store: str,
        connect_timeout: int,
        pool_size: int,
    ) -> sa.Engine:
        """An engine on *url* with this engine family's session set-up."""
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            connect_args=self.connect_args(options, connect_timeout),
        )

    def connect_args(self, options: dict[str, Any], connect_timeout: int) -> dict[str, Any]:
        """Driver arguments for a new connection."""
        return {"connect_timeout": connect_timeout}

    def column_in(
        self, column: sa.ColumnElement[Any], values: Sequence[Any], name: str
    ) -> sa.ColumnElement[bool]:
        """``column IN (...)`` in this engine's cheapest form."""
        return column.in_(list(values))

    def estimated_rows(self, conn: sa.Connection, table: sa.Table) -> int | None:
        """*table*'s row count as the engine's statistics estimate it, without a scan;
        None where the engine keeps none (or has not gathered them yet)."""
        return None

    def sampled(self, conn: sa.Connection, table: sa.Table, pages: int) -> sa.FromClause | None:
        """*table* as a random sample of about *pages* of its pages (its rows on them),
        read without a scan; the same sample every time.  None where the engine
        cannot sample (or keeps no page count for the table yet)."""
        return None

    def compact_statements(self, engine: sa.Engine, tables: Sequence[str]) -> list[str]:
        """Statements that reclaim the space of deleted rows in *tables* (``run --vacuum``),
        run outside a transaction; [] where the engine has none."""
        return []

    def compact(self, engine: sa.Engine, tables: Sequence[str]) -> list[str]:
        """Run :meth:`compact_statements` in autocommit; returns the statements run."""
        statements = self.compact_statements(engine, tables)
        if not statements:
            return []
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            if driver is not None and hasattr(driver, "autocommit"):
                driver.autocommit = True  # VACUUM cannot run inside a transaction
            cur = raw.cursor()
            for statement in statements:
                cur.execute(statement)
            cur.close()
        finally:
            raw.close()
        return statements

    def bulk_insert(
        self,
        conn: sa.Connection,
        table: sa.Table,
        names: Sequence[str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Insert *rows* (values in *names* order) in this engine's fastest way.

        An integrity failure (a parent not at home, a duplicate key) raises
        :class:`sqlalchemy.exc.IntegrityError` on every engine and leaves the
        transaction to be rolled back.
        """
        if not rows:
            return
        dialect = conn.dialect
        preparer = dialect.identifier_preparer
        marks = ", ".join([self.placeholder] * len(names))
        cols = ", ".join(preparer.quote(n) for n in names)
        target = f"{preparer.format_table(table)} ({cols})"
        if self.placeholder == "%s":  # the driver formats with %: a % in a name is doubled
            target = target.replace("%", "%%")
        sql = f"INSERT INTO {target} VALUES ({marks})"
        # the column types' own conversions (SQLite's text form of a timestamp),
        # applied once per value without SQLAlchemy's per-row parameter handling
        procs: list[tuple[int, Any]] = []
        for i, n in enumerate(names):
            proc = table.c[n].type.bind_processor(dialect)
            if proc is not None:
                procs.append((i, proc))
        if procs:
            out = []
            for r in rows:
                values = list(r)
                for i, p in procs:
                    values[i] = p(values[i])
                out.append(tuple(values))
            rows = out
        conn.exec_driver_sql(sql, rows)


SAMPLE_SEED = 20261204
"""Seed of the engines' repeatable samples: the same table gives the same sample."""


def limits(options: dict[str, Any]) -> tuple[int, int]:
    """(lock timeout, statement timeout) in seconds, from a store's ``options``."""
    lock_s = int(options.get("lock_timeout_seconds", LOCK_TIMEOUT_S))
    statement_s = int(options.get("statement_timeout_seconds", STATEMENT_TIMEOUT_S))
    return lock_s, statement_s


def read_timeout(options: dict[str, Any]) -> float:
    """Seconds a client waits for a server's answer before it takes the connection for
    lost (a transient error, retried): ``read_timeout_seconds`` in a store's ``options``,
    by default the statement limit plus :data:`READ_MARGIN_S`."""
    _lock_s, statement_s = limits(options)
    return float(options.get("read_timeout_seconds", statement_s + READ_MARGIN_S))


def _bounded_psycopg(bound: float) -> Any:
    """A psycopg connection class whose every wait for the server ends after *bound* s
    (``Connection.wait(timeout=)``, psycopg 3.3); None on an older psycopg, where the
    keepalives alone bound a dead network."""
    import inspect

    import psycopg

    if "timeout" not in inspect.signature(psycopg.Connection.wait).parameters:
        return None

    class BoundedConnection(psycopg.Connection):
        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            own = not args[1:] and kwargs.get("timeout") is None
            if own:
                kwargs["timeout"] = bound
            try:
                return super().wait(gen, *args, **kwargs)
            except psycopg.OperationalError as exc:
                if not own or type(exc).__name__ != "_WaitTimeout":
                    raise
                self.pgconn.finish()  # mid-protocol: the connection cannot be reused
                raise psycopg.OperationalError(
                    f"no answer from the server within {bound:g} s (a stalled network?); "
                    "the connection was closed"
                ) from None

    return BoundedConnection


class SQLiteDialect(Dialect):
    """SQLite: a file; the write lock is taken at BEGIN IMMEDIATE, there are no row locks."""

    family = "sqlite"
    display_name = "SQLite"
    remnants = (
        "domicile deletes with PRAGMA secure_delete=ON, so the deleted rows' cells are "
        "overwritten with zeros; but free pages and cells the application deleted or updated "
        "without it keep old contents until VACUUM (run --vacuum runs it after a done run).",
        "The application's -wal or rollback journal file beside the database may still hold "
        "pages with the rows until its next checkpoint truncates it.",
    )
    # in-process: the SQL digest would cost the client's CPU for every row read,
    # staying rows too; Python digests only the moving ones
    digests_on_read = False
    file_based = True
    locks_rows = False
    moves_stored_form = True
    key_chunk = 20_000  # under the 32,766 host parameters SQLite allows a statement
    placeholder = "?"

    def stored_type(self, column: sa.Column[Any]) -> sa.types.TypeEngine[Any] | None:
        """Untyped, every column: SQLite keeps each value as it was stored (a text
        timestamp, a decimal stored as an integer, a JSON text with its spacing),
        and the types' conversions would rewrite them (``2006-02-15 04:45:30`` as
        ``2006-02-15 04:45:30.000000``)."""
        return sa.types.NullType()

    def compact_statements(self, engine: sa.Engine, tables: Sequence[str]) -> list[str]:
        """``VACUUM``: the whole file is rebuilt, free pages returned to the file system."""
        return ["VACUUM"] if tables else []

    def column_in(
        self, column: sa.ColumnElement[Any], values: Sequence[Any], name: str
    ) -> sa.ColumnElement[bool]:
        """``IN (SELECT value FROM json_each(?))``: one parameter, so the statement is
        compiled once, not once per list of placeholders.  Only for integer and text
        keys, which JSON carries unchanged; any other key type gets a plain IN-list."""
        vals = list(values)
        if not all(type(v) in (int, str) for v in vals):
            return column.in_(vals)
        param = sa.bindparam(name, json.dumps(vals, ensure_ascii=False), type_=sa.Text())
        each: sa.Select[Any] = sa.select(sa.column("value")).select_from(sa.func.json_each(param))
        return column.in_(each.scalar_subquery())

    def create_engine(
        self,
        url: sa.URL,
        options: dict[str, Any],
        *,
        store: str,
        connect_timeout: int,
        pool_size: int,
    ) -> sa.Engine:
        """An engine whose transactions begin as the caller asks (DEFERRED or IMMEDIATE)."""
        db = url.database or ""
        if db and db != ":memory:" and not Path(db).exists():
            raise PermanentConnectorError(
                f"SQLite file {db} does not exist",
                where=f"store {store}",
                hint="fix the path in the store URL (relative paths start at the map's folder)",
            )
        # isolation_level=None hands transaction control to the "begin" hook
        # below, which can take the write lock up front (BEGIN IMMEDIATE)
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"timeout": 30, "check_same_thread": False, "isolation_level": None},
        )

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-16384")  # 16 MiB: key look-ups of big tables
            # deleted rows are overwritten with zeros in the file, not only unlinked
            # (a per-connection setting: nothing persists in the store)
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()
            register_sqlite_sha256(dbapi_conn)  # row digests computed in SQL

        return engine


class PostgreSQLDialect(Dialect):
    """PostgreSQL (psycopg 3): named sessions with lock and statement timeouts; array keys."""

    family = "postgresql"
    display_name = "PostgreSQL"
    remnants = (
        "Deleted rows stay in the table's data files as dead tuples until VACUUM reclaims "
        "them, and their bytes until the space is reused: run --vacuum runs VACUUM FULL on "
        "the tables a done run deleted from, which rewrites them.",
        "The write-ahead log (pg_wal) and any WAL archive (archive_command, base backups for "
        "point-in-time recovery) keep the rows as written until recycled or expired.",
        "Streaming and logical replicas, and changes held by replication slots, keep the rows "
        "until they replay the deletes.",
    )
    default_port = 5432
    key_chunk = 20_000  # one array parameter, whatever its length
    moves_stored_form = True

    def compact_statements(self, engine: sa.Engine, tables: Sequence[str]) -> list[str]:
        """``VACUUM FULL``: each table rewritten without its dead rows (under an exclusive
        lock while it runs), with no statement timeout: a large table takes a while."""
        quote = engine.dialect.identifier_preparer.quote
        if not tables:
            return []
        return ["SET statement_timeout = 0", *(f"VACUUM FULL {quote(t)}" for t in tables)]

    def estimated_rows(self, conn: sa.Connection, table: sa.Table) -> int | None:
        """``pg_class.reltuples``: kept by VACUUM, ANALYZE and autovacuum (-1: never)."""
        name = conn.dialect.identifier_preparer.format_table(table)
        got = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": name},
        ).scalar()
        return int(got) if got is not None and got > 0 else None

    def sampled(self, conn: sa.Connection, table: sa.Table, pages: int) -> sa.FromClause | None:
        """``TABLESAMPLE SYSTEM … REPEATABLE``: whole pages picked at random, only those
        read; the share from ``pg_class.relpages`` (0 until VACUUM or ANALYZE)."""
        name = conn.dialect.identifier_preparer.format_table(table)
        relpages = conn.execute(
            sa.text("SELECT relpages FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": name},
        ).scalar()
        if not relpages or relpages <= 0:
            return None
        percent = min(100.0, 100.0 * pages / relpages)
        return sa.tablesample(table, sa.func.system(percent), seed=sa.literal(SAMPLE_SEED))

    def stored_type(self, column: sa.Column[Any]) -> sa.types.TypeEngine[Any] | None:
        """Text, for the types whose Python form is not exact: an ``interval`` of
        ``1 mon`` reads as 30 days (and would be written back as ``30 days``), a
        ``json`` document loses its spacing and key order.  Read as their text
        form and written back from it, they reach a PostgreSQL home unchanged."""
        t = column.type
        while isinstance(t, sa.types.TypeDecorator):
            t = t.impl_instance
        if isinstance(t, sa.Interval | postgresql.INTERVAL) or (
            isinstance(t, sa.JSON) and not isinstance(t, postgresql.JSONB)
        ):
            return AsText(column.type)
        if isinstance(t, sa.DateTime | sa.Date) and not _keyed(column):
            # ``infinity`` has no Python form; the text keeps it (sessions are in UTC)
            return AsText(column.type)
        return None

    def connect_args(self, options: dict[str, Any], connect_timeout: int) -> dict[str, Any]:
        """Named in ``pg_stat_activity``, and bounded: a lock the application holds
        makes a step fail (and retry) instead of hang."""
        lock_s, statement_s = limits(options)
        return {
            "connect_timeout": connect_timeout,
            "application_name": APPLICATION_NAME,
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE_S,
            "keepalives_interval": KEEPALIVE_INTERVAL_S,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": TCP_USER_TIMEOUT_S * 1000,
            # one text form for every value at every store: UTC, ISO dates, default intervals
            "options": f"-c lock_timeout={lock_s * 1000} -c statement_timeout={statement_s * 1000}"
            " -c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres",
        }

    def create_engine(
        self,
        url: sa.URL,
        options: dict[str, Any],
        *,
        store: str,
        connect_timeout: int,
        pool_size: int,
    ) -> sa.Engine:
        """An engine whose connections wait at most :func:`read_timeout` for an answer."""
        engine = super().create_engine(
            url, options, store=store, connect_timeout=connect_timeout, pool_size=pool_size
        )
        bounded = _bounded_psycopg(read_timeout(options)) if engine.driver == "psycopg" else None
        if bounded is not None:

            @sa.event.listens_for(engine, "do_connect")
            def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
                return bounded.connect(*cargs, **cparams)

        return engine

    def column_in(
        self, column: sa.ColumnElement[Any], values: Sequence[Any], name: str
    ) -> sa.ColumnElement[bool]:
        """``= ANY(array)``: one parameter keeps the statement text the same for every
        batch, so neither SQLAlchemy nor the server compiles it again (an IN-list of
        500 placeholders was half the cost of these look-ups).  Integers go as the
        array's text form (``'{1,2,3}'``, typed ``$1::BIGINT[]``): psycopg's list dumper
        walks a Python list element by element, a tenth of a move's client time."""
        vals = list(values)
        param: sa.BindParameter[Any]
        if vals and all(type(v) is int for v in vals) and _integral(column.type):
            text = "{" + ",".join(map(str, vals)) + "}"
            element = column.type.compile(dialect=postgresql.dialect())
            param = sa.bindparam(name, text, type_=ArrayText(element))
        else:
            param = sa.bindparam(name, vals, type_=postgresql.ARRAY(column.type))
        return column == sa.any_(param)

    def bulk_insert(
        self,
        conn: sa.Connection,
        table: sa.Table,
        names: Sequence[str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """``COPY ... FROM STDIN`` (psycopg 3) in the connection's transaction.

        Values are sent in COPY's text form and parsed by the server into the
        column types, so enums and domains load like any text.  A value
        psycopg cannot write in text form (a JSON document as a dict) makes the
        rows go through :meth:`Dialect.bulk_insert` instead.
        """
        if not rows:
            return
        import psycopg

        raw = conn.connection.driver_connection
        if not isinstance(raw, psycopg.Connection) or any(
            type(v) in (dict, list) for r in rows for v in r
        ):
            super().bulk_insert(conn, table, names, rows)
            return
        preparer = conn.dialect.identifier_preparer
        cols = ", ".join(preparer.quote(n) for n in names)
        sql = f"COPY {preparer.format_table(table)} ({cols}) FROM STDIN"
        try:
            with raw.cursor() as cur, cur.copy(sql) as copy:
                for r in rows:
                    copy.write_row(r)
        except psycopg.IntegrityError as exc:
            raise sa.exc.IntegrityError(sql, None, exc) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # the connection lost mid-COPY: translated as transient, like any statement's
            raise sa.exc.OperationalError(sql, None, exc) from exc
        except (psycopg.DataError, psycopg.ProgrammingError) as exc:
            raise sa.exc.DBAPIError(sql, None, exc) from exc


class MySQLDialect(Dialect):
    """MySQL and MariaDB (PyMySQL): UTC sessions, bounded lock waits and statements."""

    family = "mysql"  # MariaDB too: one server speaks both
    display_name = "MySQL/MariaDB"
    remnants = (
        "InnoDB keeps the deleted rows' old versions in the undo logs until purge removes "
        "them, and their bytes in free page space until reused: run --vacuum runs OPTIMIZE "
        "TABLE (a rebuild) on the tables a done run deleted from.",
        "The binary log (and the relay logs of replicas) holds the rows as inserted and, in "
        "row format, the deleted rows' full images until the logs expire "
        "(binlog_expire_logs_seconds) or are purged (PURGE BINARY LOGS).",
        "The redo log (ib_logfile / ib_redo) holds recent changes until it is overwritten.",
    )
    key_chunk = 5000
    default_port = 3306

    def estimated_rows(self, conn: sa.Connection, table: sa.Table) -> int | None:
        """``information_schema.TABLES.TABLE_ROWS``: InnoDB's estimate from its index
        statistics (exact for MyISAM)."""
        got = conn.execute(
            sa.text(
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
            ),
            {"schema": table.schema, "name": table.name},
        ).scalar()
        return int(got) if got else None

    def compact_statements(self, engine: sa.Engine, tables: Sequence[str]) -> list[str]:
        """``OPTIMIZE TABLE``: InnoDB rebuilds each table without the deleted rows."""
        quote = engine.dialect.identifier_preparer.quote
        return [f"OPTIMIZE TABLE {quote(t)}" for t in tables]

    def connect_args(self, options: dict[str, Any], connect_timeout: int) -> dict[str, Any]:
        """The connection names itself to the server, and waits at most
        :func:`read_timeout` for an answer (or for a write to go out)."""
        bound = read_timeout(options)
        return {
            "connect_timeout": connect_timeout,
            "program_name": APPLICATION_NAME,
            "read_timeout": bound,
            "write_timeout": bound,
        }

    def create_engine(
        self,
        url: sa.URL,
        options: dict[str, Any],
        *,
        store: str,
        connect_timeout: int,
        pool_size: int,
    ) -> sa.Engine:
        """An engine whose sessions run in UTC with bounded waits."""
        engine = super().create_engine(
            url, options, store=store, connect_timeout=connect_timeout, pool_size=pool_size
        )
        lock_s, statement_s = limits(options)

        @sa.event.listens_for(engine, "connect")
        def _session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # TIMESTAMP columns are read in the session's zone: make it UTC
            cur.execute("SET time_zone = '+00:00'")
            # a copied id 0 is kept as 0, not replaced by the next AUTO_INCREMENT value
            cur.execute(
                "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
                "'NO_AUTO_VALUE_ON_ZERO')"
            )
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {int(lock_s)}")
            # MariaDB's statement limit, in seconds (MySQL names it max_execution_time, in ms)
            if "mariadb" in str(getattr(dbapi_conn, "server_version", "") or "").lower():
                cur.execute(f"SET SESSION max_statement_time = {int(statement_s)}")
            else:
                cur.execute(f"SET SESSION max_execution_time = {int(statement_s) * 1000}")
            cur.close()

        return engine


_BY_BACKEND: dict[str, Dialect] = {
    "sqlite": SQLiteDialect(),
    "postgresql": PostgreSQLDialect(),
    "mysql": MySQLDialect(),
    "mariadb": MySQLDialect(),
}


def _integral(type_: sa.types.TypeEngine[Any]) -> bool:
    """True for an integer column type (whose array text form is ``{1,2,3}``)."""
    return isinstance(type_, sa.Integer) and not isinstance(type_, sa.types.TypeDecorator)


def _keyed(column: sa.Column[Any]) -> bool:
    """True when *column* is in a key, a unique index or a foreign key (compared by value)."""
    table = column.table
    if column.primary_key or column.foreign_keys:
        return True
    for c in table.constraints:
        if isinstance(c, sa.UniqueConstraint) and column.name in c.columns:
            return True
    return any(ix.unique and column.name in ix.columns for ix in table.indexes)


def dialect_for(backend: str) -> Dialect:
    """The dialect of a SQLAlchemy backend name (``sqlite``, ``postgresql``, ``mysql``, ...)."""
    return _BY_BACKEND.get(backend, Dialect())
