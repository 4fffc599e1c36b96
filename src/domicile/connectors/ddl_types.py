"""Column types of home tables: translation across engine families, PostgreSQL named types.

See :mod:`domicile.connectors.schema` for the rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from domicile.connectors.ddl_common import HINT, INFO_DOMAINS, family, quote_string, type_family
from domicile.errors import PermanentConnectorError

MYSQL_MAX_KEY_CHARS = 768  # InnoDB's 3072-byte index key limit / 4 bytes per utf8mb4 character
MYSQL_DEFAULT_KEY_CHARS = 255
MYSQL_MAX_VARCHAR = 255  # longer strings become LONGTEXT unless they are keys


def timestamp_type(timezone: bool = False) -> sa.types.TypeEngine[Any]:
    """A portable timestamp type with microseconds on every engine.

    SQLAlchemy's generic ``DateTime`` compiles to ``DATETIME`` on MySQL and
    MariaDB, which keeps whole seconds only; the variant asks for
    ``DATETIME(6)`` there.  A timezone-aware column stores UTC on engines
    without zones (see :func:`domicile.digest.storage_value`).
    """
    return sa.DateTime(timezone=timezone).with_variant(
        mysql.DATETIME(timezone=timezone, fsp=6), "mysql", "mariadb"
    )


def time_type() -> sa.types.TypeEngine[Any]:
    """A portable time-of-day type with microseconds (``TIME(6)`` on MySQL)."""
    return sa.Time().with_variant(mysql.TIME(fsp=6), "mysql", "mariadb")


def _cannot(column: sa.Column[Any], target: str, why: str = "") -> PermanentConnectorError:
    return PermanentConnectorError(
        f"cannot create column {column.table.name}.{column.name} of type {column.type!r}"
        f" on {target}{': ' + why if why else ''}",
        where=f"table {column.table.name}",
        hint=HINT,
    )


def _generic_type(column: sa.Column[Any], target: str) -> sa.types.TypeEngine[Any]:
    """A generic SQLAlchemy type for *column*'s reflected type (cross-family copy)."""
    t: sa.types.TypeEngine[Any] = column.type
    while isinstance(t, sa.types.TypeDecorator | postgresql.DOMAIN):
        t = t.data_type if isinstance(t, postgresql.DOMAIN) else t.impl_instance
    if isinstance(t, sa.Boolean) or (
        isinstance(t, mysql.TINYINT) and getattr(t, "display_width", None) == 1
    ):
        return sa.Boolean()
    if isinstance(t, mysql.YEAR):
        return sa.SmallInteger()
    if isinstance(t, sa.Integer):
        unsigned = bool(getattr(t, "unsigned", False))
        if isinstance(t, sa.BigInteger):
            return sa.Numeric(20, 0) if unsigned else sa.BigInteger()
        if isinstance(t, mysql.TINYINT):
            return sa.SmallInteger()
        if isinstance(t, sa.SmallInteger):
            return sa.Integer() if unsigned else sa.SmallInteger()
        if isinstance(t, mysql.MEDIUMINT):
            return sa.Integer()
        return sa.BigInteger() if unsigned else sa.Integer()
    if isinstance(t, sa.Float):
        return sa.Double()
    if isinstance(t, sa.Numeric):
        return sa.Numeric(t.precision, t.scale)
    if isinstance(t, sa.Uuid):
        return sa.Uuid()
    if isinstance(t, sa.JSON | sa.ARRAY):
        return sa.JSON()
    if isinstance(t, sa.Enum):
        return sa.String(max((len(e) for e in t.enums), default=1) or 1)
    if isinstance(t, mysql.SET):
        raise _cannot(column, target, "a MySQL SET has no counterpart")
    if isinstance(t, sa.types._Binary):
        return sa.LargeBinary()
    if isinstance(t, sa.CHAR):
        return sa.CHAR(t.length) if t.length else sa.Text()
    if isinstance(t, sa.String):
        if isinstance(t, sa.Text) or not t.length:
            return sa.Text()
        return sa.String(t.length)
    if isinstance(t, sa.DateTime):
        if isinstance(t, mysql.TIMESTAMP):
            return sa.DateTime()  # read naive in the session zone; no zone to keep
        return sa.DateTime(timezone=bool(t.timezone))
    if isinstance(t, sa.Date):
        return sa.Date()
    if isinstance(t, sa.Time):
        return sa.Time(timezone=bool(t.timezone) and target == "postgresql")
    if isinstance(t, sa.Interval | postgresql.INTERVAL):
        raise _cannot(column, target, "an interval has no portable counterpart")
    if isinstance(t, sa.types.NullType):
        return sa.Text()  # an untyped SQLite column; text is the only safe choice
    try:
        generic = t.as_generic()
    except NotImplementedError as exc:  # a type SQLAlchemy has no generic form for: refused
        raise _cannot(column, target) from exc
    if type_family(generic) is not None:
        raise _cannot(column, target)
    return generic


def _mysql_collation(dialect: sa.engine.Dialect) -> str:
    """A binary, no-pad utf8mb4 collation: equality as on PostgreSQL and SQLite."""
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if (dialect.server_version_info or (0,)) >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"


def _for_mysql(
    t: sa.types.TypeEngine[Any], keyed: bool, dialect: sa.engine.Dialect
) -> sa.types.TypeEngine[Any]:
    """Adapt a generic type to MySQL/MariaDB (see the module docstring)."""
    collation = _mysql_collation(dialect)
    if isinstance(t, sa.DateTime):
        return mysql.DATETIME(timezone=bool(t.timezone), fsp=6)
    if isinstance(t, sa.Time):
        return mysql.TIME(fsp=6)
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        if t.precision is None:
            return mysql.DECIMAL(65, 30)
        precision = min(t.precision, 65)
        return mysql.DECIMAL(precision, min(t.scale or 0, 30, precision))
    if isinstance(t, sa.LargeBinary):
        if keyed:
            return mysql.VARBINARY(min(t.length or MYSQL_DEFAULT_KEY_CHARS, 3072))
        return mysql.LONGBLOB()
    if isinstance(t, sa.CHAR) and t.length and t.length <= 255:
        return mysql.CHAR(t.length, collation=collation)
    if isinstance(t, sa.String) and not isinstance(t, sa.Enum):
        if keyed:
            return mysql.VARCHAR(
                min(t.length or MYSQL_DEFAULT_KEY_CHARS, MYSQL_MAX_KEY_CHARS), collation=collation
            )
        if isinstance(t, sa.Text) or not t.length or t.length > MYSQL_MAX_VARCHAR:
            return mysql.LONGTEXT(collation=collation)
        return mysql.VARCHAR(t.length, collation=collation)
    return t


def target_type(
    column: sa.Column[Any], target_dialect: sa.engine.Dialect, keyed: bool = False
) -> sa.types.TypeEngine[Any]:
    """The type *column* gets in a table created on *target_dialect*.

    *keyed*: the column is part of a primary key, index, unique constraint or
    foreign key (MySQL needs a bounded type for it).
    """
    target = family(target_dialect)
    source = type_family(column.type)
    if source == target:
        t = column.type.copy()
        if isinstance(t, postgresql.ARRAY | postgresql.ENUM | postgresql.DOMAIN):
            _no_type_creation(t)
        if target == "mysql" and isinstance(t, mysql.types._StringType) and not t.collation:
            t.collation = _mysql_collation(target_dialect)
        return t
    generic = _generic_type(column, target)
    if target == "mysql":
        return _for_mysql(generic, keyed, target_dialect)
    return generic


def _no_type_creation(t: sa.types.TypeEngine[Any]) -> None:
    """Named types are created by domicile itself, before the table (never by an event)."""
    if isinstance(t, postgresql.ARRAY):
        _no_type_creation(t.item_type)
    elif isinstance(t, postgresql.ENUM | postgresql.DOMAIN):
        t.create_type = False
        if isinstance(t, postgresql.DOMAIN):
            _no_type_creation(t.data_type)


# -- PostgreSQL named types (same family) --------------------------------------------


@dataclass(frozen=True)
class NamedType:
    """A PostgreSQL enum or domain a column needs, as PostgreSQL's catalogue spells it.

    *base* is ``format_type`` of a domain's base type; *checks* are
    ``(name, expression)`` pairs, the expression as ``pg_get_constraintdef``
    writes it without ``CHECK (...)``.
    """

    kind: str  # "enum" or "domain"
    name: str
    labels: tuple[str, ...] = ()
    base: str = ""
    not_null: bool = False
    default: str | None = None
    checks: tuple[tuple[str, str], ...] = ()

    def create_sql(self, dialect: sa.engine.Dialect) -> str:
        quote = dialect.identifier_preparer.quote
        if self.kind == "enum":
            labels = ", ".join(quote_string(label, "postgresql") for label in self.labels)
            return f"CREATE TYPE {quote(self.name)} AS ENUM ({labels})"
        parts = [f"CREATE DOMAIN {quote(self.name)} AS {self.base}"]
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.not_null:
            parts.append("NOT NULL")
        parts.extend(f"CONSTRAINT {quote(name)} CHECK ({check})" for name, check in self.checks)
        return " ".join(parts)

    def difference(self, other: NamedType) -> str | None:
        """How *other* (the type of this name at home) differs, or None when it is the same."""
        if self.kind != other.kind:
            return f"it is an {other.kind} at home, an {self.kind} at the source"
        if self.kind == "enum":
            if self.labels != other.labels:
                return f"labels {list(other.labels)} at home, {list(self.labels)} at the source"
            return None
        for label, mine, theirs in (
            ("base type", self.base, other.base),
            ("NOT NULL", self.not_null, other.not_null),
            ("default", self.default, other.default),
            ("checks", sorted(c for _, c in self.checks), sorted(c for _, c in other.checks)),
        ):
            if mine != theirs:
                return f"{label} {theirs!r} at home, {mine!r} at the source"
        return None


def _walk(t: sa.types.TypeEngine[Any]) -> Iterator[sa.types.TypeEngine[Any]]:
    """The named types inside *t*, each after the named types it is built on."""
    if isinstance(t, sa.ARRAY):
        yield from _walk(t.item_type)
    elif isinstance(t, postgresql.DOMAIN):
        yield from _walk(t.data_type)
        yield t
    elif isinstance(t, postgresql.ENUM) and t.name:
        yield t


def named_types(column: sa.Column[Any]) -> list[NamedType]:
    """The PostgreSQL enums and domains *column*'s type needs, dependencies first."""
    known: dict[str, NamedType] = column.table.info.get(INFO_DOMAINS) or {}
    pg = postgresql.dialect()
    out = []
    for t in _walk(column.type):
        name = str(getattr(t, "name", ""))
        if name in known:
            out.append(known[name])
        elif isinstance(t, postgresql.DOMAIN):
            check = t.check.text if isinstance(t.check, sa.TextClause) else t.check
            default = t.default.text if isinstance(t.default, sa.TextClause) else t.default
            out.append(
                NamedType(
                    "domain",
                    name,
                    base=str(t.data_type.compile(dialect=pg)),
                    not_null=bool(t.not_null),
                    default=default,
                    checks=((t.constraint_name or f"{name}_check", check),) if check else (),
                )
            )
        else:
            out.append(NamedType("enum", name, labels=tuple(getattr(t, "enums", ()))))
    return out


_PG_TYPES = """
SELECT t.oid, t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
       t.typdefault
FROM pg_catalog.pg_type t
WHERE t.typname = ANY(:names) AND pg_catalog.pg_type_is_visible(t.oid)
"""
_PG_LABELS = (
    "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = :oid ORDER BY enumsortorder"
)
_PG_CHECKS = """
SELECT conname, pg_catalog.pg_get_constraintdef(oid, true) FROM pg_catalog.pg_constraint
WHERE contypid = :oid AND contype = 'c' ORDER BY conname
"""


def read_named_types(conn: sa.Connection, names: set[str]) -> dict[str, NamedType]:
    """The visible types of these *names* in a PostgreSQL database, from its catalogue.

    A name of another kind of type (a table's row type, a base type) is
    returned with that kind (``composite``, ``base``...), so that a clash shows.
    """
    out: dict[str, NamedType] = {}
    if not names:
        return out
    kinds = {"e": "enum", "d": "domain", "c": "composite", "b": "base", "r": "range"}
    rows = conn.execute(sa.text(_PG_TYPES), {"names": sorted(names)}).all()
    for oid, name, kind, base, not_null, default in rows:
        kind = kinds.get(kind, str(kind))
        if kind == "enum":
            labels = conn.execute(sa.text(_PG_LABELS), {"oid": oid}).scalars().all()
            out[name] = NamedType("enum", name, labels=tuple(labels))
        elif kind == "domain":
            checks = []
            for cname, definition in conn.execute(sa.text(_PG_CHECKS), {"oid": oid}).all():
                text = str(definition)
                if text.upper().startswith("CHECK (") and text.endswith(")"):
                    checks.append((str(cname), text[7:-1]))
            out[name] = NamedType(
                "domain",
                name,
                base=base,
                not_null=bool(not_null),
                default=default,
                checks=tuple(checks),
            )
        else:
            out[name] = NamedType(kind, name)
    return out


def check_home_types(wanted: list[NamedType], home: dict[str, NamedType]) -> None:
    """Refuse when a type of a wanted name exists at home with another definition."""
    for named in wanted:
        there = home.get(named.name)
        if there is None:
            continue
        difference = named.difference(there)
        if difference:
            raise PermanentConnectorError(
                f"type {named.name} exists at the home store with another definition: {difference}",
                where=f"type {named.name}",
                hint="make the two definitions equal (or rename one), then run again;"
                " nothing was created",
            )
