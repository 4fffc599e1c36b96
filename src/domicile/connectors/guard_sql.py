"""The write guard in each engine's own SQL: triggers that refuse rows of subjects moved home.

A guarded store gets two tables of domicile's own and triggers on the dataset
tables.  ``domicile_guard_subjects`` holds one row per subject the triggers
care about: ``refuse = 1`` for a subject whose jurisdiction forbids this
store and who has come home (a write of their row here is refused),
``refuse = 0`` for a subject whose jurisdiction allows this store (only
filled where a ``multi_owner: each`` table needs it: such a record may sit
wherever one of its owners' rules allows).  ``domicile_guard_meta`` holds
the salt and what was installed.

Subjects are kept as salted SHA-256 hashes of their id's text where the
engine hashes in SQL (PostgreSQL ``sha256()``, MySQL/MariaDB ``SHA2()``), and
as plain ids on SQLite, which has no hash function without an extension.

Everything here is built from a :class:`TableGuard`, an engine-neutral
description made by :mod:`domicile.guard`: which owners a row has (a column,
or a path of hops joined inside this store), the message's home store, the
exceptions that allow rows here, and whether the dataset is ``each``.
Identifiers are quoted by SQLAlchemy's identifier preparer and values are
rendered by SQLAlchemy's literal compiler: nothing from the map is pasted
into SQL unquoted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from domicile.connectors.dialects import dialect_for
from domicile.errors import ConfigError
from domicile.model import Hop

SUBJECTS_TABLE = "domicile_guard_subjects"
META_TABLE = "domicile_guard_meta"
PREFIX = "domicile_guard_"
"""Every trigger (and PostgreSQL function) the guard creates starts with this."""

MESSAGE_START = "domicile guard:"


@dataclass(frozen=True)
class OwnerRef:
    """One owner of a row: the row's column, then hops joined inside this store."""

    column: str
    hops: tuple[Hop, ...] = ()


@dataclass(frozen=True)
class WaiverRef:
    """An exception that allows rows here: its row filter, expiry and jurisdictions."""

    where: Mapping[str, Any]
    expires: dt.date
    jurisdictions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableGuard:
    """What the triggers of one table check (engine-neutral; see the module docstring)."""

    table: str
    owners: tuple[OwnerRef, ...]
    homes: Mapping[str, str]  # jurisdiction -> its home store (for SQLite's literal messages)
    waivers: tuple[WaiverRef, ...] = ()
    each: bool = False


def id_text(value: Any) -> str:
    """A subject id's text, as the engines' casts to text write it (int, text, UUID)."""
    if isinstance(value, bool) or not isinstance(value, int | str | uuid.UUID):
        raise ConfigError(
            f"subject id {value!r} ({type(value).__name__}) cannot be guarded: "
            "only integer, text and UUID ids are",
            where="subjects.id",
        )
    return str(value)


def trigger_base(table: str) -> str:
    """The name stem of *table*'s triggers: readable, unique, short enough for every engine."""
    stem = "".join(ch if ch.isalnum() else "_" for ch in table.lower())[:24]
    return f"{PREFIX}{stem}_{hashlib.sha256(table.encode()).hexdigest()[:8]}"


class GuardSQL(ABC):
    """The guard's SQL for one engine family; each engine's subclass gives what differs
    (the abstract methods: the stored form of an id, and the triggers)."""

    family: ClassVar[str] = "generic"
    hashes: ClassVar[bool] = True
    """True when subjects are stored as salted hashes (the engine hashes in SQL)."""

    # -- domicile's tables ------------------------------------------------------

    def subject_type(self) -> sa.types.TypeEngine[Any]:
        """The column type of a stored subject (a 32-byte hash, or the id's text)."""
        return sa.LargeBinary(32)

    def tables(self) -> tuple[sa.Table, sa.Table]:
        """``domicile_guard_subjects`` and ``domicile_guard_meta`` (fresh objects)."""
        md = sa.MetaData()
        subjects = sa.Table(
            SUBJECTS_TABLE,
            md,
            sa.Column("subject", self.subject_type(), primary_key=True),
            sa.Column("jurisdiction", sa.String(64), nullable=False),
            sa.Column("home", sa.String(255), nullable=False),
            sa.Column("refuse", sa.SmallInteger, nullable=False),
        )
        meta = sa.Table(
            META_TABLE,
            md,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        return subjects, meta

    def subject_value(self, value: Any, salt: str) -> Any:
        """What ``domicile_guard_subjects.subject`` holds for subject id *value*."""
        return hashlib.sha256((salt + id_text(value)).encode()).digest()

    def fill(self, conn: sa.Connection, rows: list[tuple[Any, str, str, int]]) -> None:
        """Replace the guarded subjects with *rows* (subject value, jurisdiction, home, refuse)."""
        subjects, _ = self.tables()
        conn.execute(subjects.delete())
        names = [c.name for c in subjects.columns]
        for start in range(0, len(rows), 20_000):
            dialect_for(self.family).bulk_insert(
                conn, subjects, names, rows[start : start + 20_000]
            )

    # -- SQL fragments --------------------------------------------------------

    @abstractmethod
    def hash_sql(self, expr: str, salt: str) -> str:
        """SQL for the stored form of the subject id *expr*."""

    def text_sql(self, expr: str) -> str:
        """SQL for *expr* cast to text."""
        return f"CAST({expr} AS CHAR)"

    def concat(self, parts: Sequence[str]) -> str:
        """SQL concatenating *parts*."""
        return "CONCAT(" + ", ".join(parts) + ")"

    def today_sql(self) -> str:
        """SQL for today's date, comparable with :meth:`date_sql`."""
        return "CURRENT_DATE"

    def date_sql(self, day: dt.date) -> str:
        """A date literal."""
        return f"DATE '{day.isoformat()}'"

    def literal(self, conn: sa.Connection, value: Any) -> str:
        """*value* as a SQL literal of this engine (SQLAlchemy's literal compiler)."""
        return str(
            sa.literal(value).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        )

    def q(self, conn: sa.Connection, name: str) -> str:
        """*name* quoted as an identifier."""
        return str(conn.dialect.identifier_preparer.quote(name))

    def qualified(self, conn: sa.Connection, name: str) -> str:
        """*name* as the triggers refer to it (the same schema as the guarded table)."""
        return self.q(conn, name)

    def _chain(
        self, conn: sa.Connection, owner: OwnerRef, alias: str, salt: str
    ) -> tuple[str, str, str]:
        """(FROM, WHERE, value) joining *owner*'s path from ``NEW`` to the subjects table."""
        guard = f"{self.qualified(conn, SUBJECTS_TABLE)} {alias}"
        value = f"NEW.{self.q(conn, owner.column)}"
        if not owner.hops:
            return guard, f"{alias}.subject = {self.hash_sql(value, salt)}", value
        parts: list[str] = []
        start = ""
        for k, hop in enumerate(owner.hops, 1):
            h = f"{alias}h{k}"
            table = f"{self.qualified(conn, hop.table)} {h}"
            match = f"{h}.{self.q(conn, hop.match)}"
            if k == 1:
                parts.append(table)
                start = f"{match} = {value}"
            else:
                parts.append(f"JOIN {table} ON {match} = {value}")
            value = f"{h}.{self.q(conn, hop.read)}"
        parts.append(f"JOIN {guard} ON {alias}.subject = {self.hash_sql(value, salt)}")
        return " ".join(parts), start, value

    def _where(self, conn: sa.Connection, where: Mapping[str, Any]) -> str:
        out = []
        for col, value in where.items():
            ref = f"NEW.{self.q(conn, col)}"
            if value is None:
                out.append(f"{ref} IS NULL")
            elif isinstance(value, list | tuple):
                out.append(f"{ref} IN ({', '.join(self.literal(conn, v) for v in value)})")
            else:
                out.append(f"{ref} = {self.literal(conn, value)}")
        return " AND ".join(out) or "1 = 1"

    def offender(
        self,
        conn: sa.Connection,
        spec: TableGuard,
        owner: OwnerRef,
        salt: str,
        jurisdiction: str | None = None,
    ) -> tuple[str, str, str]:
        """(FROM, WHERE, value): a guarded owner of the written row, unless an exception
        or (``each``) another owner's rule allows the row here."""
        from_, cond, value = self._chain(conn, owner, "g", salt)
        conds = [c for c in (cond, "g.refuse = 1") if c]
        if jurisdiction is not None:
            conds.append(f"g.jurisdiction = {self.literal(conn, jurisdiction)}")
        allowed = []
        for w in spec.waivers:
            parts = [
                self._where(conn, w.where),
                f"{self.today_sql()} <= {self.date_sql(w.expires)}",
            ]
            if w.jurisdictions is not None:
                names = ", ".join(self.literal(conn, j) for j in w.jurisdictions)
                parts.append(f"g.jurisdiction IN ({names})")
            allowed.append("(" + " AND ".join(parts) + ")")
        if allowed:
            conds.append("NOT (" + " OR ".join(allowed) + ")")
        if spec.each:
            for k, other in enumerate(spec.owners):
                e_from, e_cond, _ = self._chain(conn, other, f"e{k}", salt)
                e_where = " AND ".join(c for c in (e_cond, f"e{k}.refuse = 0") if c)
                conds.append(f"NOT EXISTS (SELECT 1 FROM {e_from} WHERE {e_where})")
        return from_, " AND ".join(conds), value

    def message_sql(self, conn: sa.Connection, table: str, value: str) -> str:
        """SQL for the refusal's text: the subject, its jurisdiction and its home store."""
        return self.concat(
            [
                self.literal(conn, f"{MESSAGE_START} subject "),
                self.text_sql(value),
                self.literal(conn, " of "),
                "g.jurisdiction",
                self.literal(conn, " has moved home to store '"),
                "g.home",
                self.literal(conn, f"': write this {table} row there"),
            ]
        )

    # -- triggers -------------------------------------------------------------

    @abstractmethod
    def install(self, conn: sa.Connection, spec: TableGuard, salt: str) -> list[str]:
        """Create *spec.table*'s triggers; the names created."""

    @abstractmethod
    def installed(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """(trigger, table) of every guard trigger in this store."""

    def drop(self, conn: sa.Connection, triggers: Sequence[tuple[str, str]]) -> None:
        """Drop the guard triggers *triggers* (as listed by :meth:`installed`)."""
        for name, _table in triggers:
            self.execute(conn, f"DROP TRIGGER IF EXISTS {self.q(conn, name)}")

    def row_triggers(self, conn: sa.Connection, table: str, body: str) -> list[str]:
        """``BEFORE INSERT`` and ``BEFORE UPDATE`` triggers on *table* running *body*
        for each row; their names."""
        names = []
        base = trigger_base(table)
        for event, suffix in (("INSERT", "_i"), ("UPDATE", "_u")):
            name = base + suffix
            self.execute(
                conn,
                f"CREATE TRIGGER {self.q(conn, name)} BEFORE {event} ON "
                f"{self.q(conn, table)} FOR EACH ROW {body}",
            )
            names.append(name)
        return names

    def execute(self, conn: sa.Connection, sql: str) -> None:
        """Run DDL text as is (no parameter markers are interpreted)."""
        conn.execution_options(no_parameters=True).exec_driver_sql(sql)


class SQLiteGuard(GuardSQL):
    """SQLite: plain ids (no hash function in SQL); ``RAISE()`` takes a literal
    message only (before SQLite 3.47), so each jurisdiction gets its own check."""

    family = "sqlite"
    hashes = False

    def subject_type(self) -> sa.types.TypeEngine[Any]:
        return sa.Text()

    def subject_value(self, value: Any, salt: str) -> Any:
        return id_text(value)

    def hash_sql(self, expr: str, salt: str) -> str:
        return f"CAST({expr} AS TEXT)"

    def today_sql(self) -> str:
        return "date('now')"

    def date_sql(self, day: dt.date) -> str:
        return f"'{day.isoformat()}'"

    def install(self, conn: sa.Connection, spec: TableGuard, salt: str) -> list[str]:
        body = []
        for jurisdiction, home in spec.homes.items():
            message = (
                f"{MESSAGE_START} a subject of {jurisdiction} has moved home to store "
                f"'{home}': write this {spec.table} row there"
            )
            for owner in spec.owners:
                from_, where, _ = self.offender(conn, spec, owner, salt, jurisdiction)
                body.append(
                    f"SELECT RAISE(ABORT, {self.literal(conn, message)}) "
                    f"WHERE EXISTS (SELECT 1 FROM {from_} WHERE {where});"
                )
        return self.row_triggers(conn, spec.table, f"BEGIN {' '.join(body)} END")

    def installed(self, conn: sa.Connection) -> list[tuple[str, str]]:
        rows = conn.exec_driver_sql(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
        )
        return [(n, t) for n, t in rows if str(n).startswith(PREFIX)]


class PostgreSQLGuard(GuardSQL):
    """PostgreSQL: one PL/pgSQL function and one trigger per table; ``sha256()`` hashes."""

    family = "postgresql"

    def hash_sql(self, expr: str, salt: str) -> str:
        return f"sha256(convert_to({self._salt(salt)} || ({expr})::text, 'UTF8'))"

    @staticmethod
    def _salt(salt: str) -> str:
        if not salt.isalnum():
            raise ValueError("the salt is hexadecimal")
        return f"'{salt}'"

    def text_sql(self, expr: str) -> str:
        return f"({expr})::text"

    def concat(self, parts: Sequence[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def qualified(self, conn: sa.Connection, name: str) -> str:
        # the application's search_path may differ from domicile's: name the schema
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
        return f"{self.q(conn, str(schema))}.{self.q(conn, name)}"

    def install(self, conn: sa.Connection, spec: TableGuard, salt: str) -> list[str]:
        name = trigger_base(spec.table)
        checks = []
        for owner in spec.owners:
            from_, where, value = self.offender(conn, spec, owner, salt)
            msg = self.message_sql(conn, spec.table, value)
            checks.append(
                f"  msg := (SELECT {msg} FROM {from_} WHERE {where} LIMIT 1);\n"
                "  IF msg IS NOT NULL THEN RAISE EXCEPTION USING MESSAGE = msg, "
                "ERRCODE = 'check_violation'; END IF;\n"
            )
        body = "DECLARE msg text;\nBEGIN\n" + "".join(checks) + "  RETURN NEW;\nEND\n"
        tag = "$domicile_guard$"
        if tag in body:
            raise ConfigError(f"table {spec.table}: a value of the map contains {tag}")
        function = f"{self.qualified(conn, name)}()"
        self.execute(
            conn,
            f"CREATE FUNCTION {function} RETURNS trigger LANGUAGE plpgsql AS {tag}\n{body}{tag}",
        )
        self.execute(
            conn,
            f"CREATE TRIGGER {self.q(conn, name)} BEFORE INSERT OR UPDATE ON "
            f"{self.qualified(conn, spec.table)} FOR EACH ROW EXECUTE FUNCTION {function}",
        )
        return [name]

    def installed(self, conn: sa.Connection) -> list[tuple[str, str]]:
        rows = conn.exec_driver_sql(
            "SELECT t.tgname, c.relname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE NOT t.tgisinternal AND n.nspname = current_schema() ORDER BY t.tgname"
        )
        return [(n, t) for n, t in rows if str(n).startswith(PREFIX)]

    def functions(self, conn: sa.Connection) -> list[str]:
        """The guard's trigger functions in the current schema."""
        rows = conn.exec_driver_sql(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() ORDER BY p.proname"
        )
        return [str(n) for (n,) in rows if str(n).startswith(PREFIX)]

    def drop(self, conn: sa.Connection, triggers: Sequence[tuple[str, str]]) -> None:
        for name, table in triggers:
            self.execute(
                conn,
                f"DROP TRIGGER IF EXISTS {self.q(conn, name)} ON {self.qualified(conn, table)}",
            )
        for function in self.functions(conn):
            self.execute(conn, f"DROP FUNCTION IF EXISTS {self.qualified(conn, function)}()")


class MySQLGuard(GuardSQL):
    """MySQL and MariaDB: a BEFORE INSERT and a BEFORE UPDATE trigger per table;
    ``SHA2()`` hashes; ``SIGNAL`` carries at most 128 characters of message."""

    family = "mysql"

    def subject_type(self) -> sa.types.TypeEngine[Any]:
        return mysql.VARBINARY(32)

    def hash_sql(self, expr: str, salt: str) -> str:
        if not salt.isalnum():
            raise ValueError("the salt is hexadecimal")
        return f"UNHEX(SHA2(CONCAT('{salt}', {expr}), 256))"

    def install(self, conn: sa.Connection, spec: TableGuard, salt: str) -> list[str]:
        checks = []
        for owner in spec.owners:
            from_, where, value = self.offender(conn, spec, owner, salt)
            msg = self.message_sql(conn, spec.table, value)
            checks.append(
                f"SET msg = (SELECT LEFT({msg}, 128) FROM {from_} WHERE {where} LIMIT 1); "
                "IF msg IS NOT NULL THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg; END IF; "
            )
        body = "BEGIN DECLARE msg VARCHAR(128) DEFAULT NULL; " + "".join(checks) + "END"
        return self.row_triggers(conn, spec.table, body)

    def installed(self, conn: sa.Connection) -> list[tuple[str, str]]:
        rows = conn.exec_driver_sql(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY TRIGGER_NAME"
        )
        return [(n, t) for n, t in rows if str(n).startswith(PREFIX)]


_BY_BACKEND: dict[str, GuardSQL] = {
    "sqlite": SQLiteGuard(),
    "postgresql": PostgreSQLGuard(),
    "mysql": MySQLGuard(),
    "mariadb": MySQLGuard(),
}


def guard_sql_for(backend: str) -> GuardSQL | None:
    """The guard's SQL for a SQLAlchemy backend name; None: this engine cannot be guarded."""
    return _BY_BACKEND.get(backend)
