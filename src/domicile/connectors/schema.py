"""Create a dataset's table at its home store from the source's reflected definition.

The home may run another engine than the source, so a reflected table is
translated through SQLAlchemy's generic types.  The rules, and why:

- **Same engine family** (PostgreSQL to PostgreSQL, MySQL/MariaDB to
  MySQL/MariaDB, SQLite to SQLite): dialect types are kept as reflected
  (``JSONB`` stays ``JSONB``, ``TINYINT UNSIGNED`` stays unsigned), since they
  compile at the target and are the most faithful copy.
- **Across families** every type is mapped to a generic one:
  ``JSONB``/``JSON`` → ``JSON``; PostgreSQL ``ARRAY`` → ``JSON``; MySQL
  ``TINYINT(1)`` → ``Boolean``; every float → ``Double`` (``Float(53)``, the
  double every engine returns); MySQL unsigned integers → the next wider
  signed type (``BIGINT UNSIGNED`` → ``NUMERIC(20, 0)``); ``ENUM`` →
  ``VARCHAR`` as long as its longest value; ``YEAR`` → ``SMALLINT``; binary
  types → ``LargeBinary``; ``NCHAR``/``NVARCHAR`` → ``CHAR``/``VARCHAR``;
  MySQL ``TIMESTAMP`` → naive ``DateTime``.  A type with no faithful
  counterpart (``INTERVAL``, MySQL ``SET``, network types) raises
  :class:`~domicile.errors.PermanentConnectorError`: create that table
  yourself and domicile uses it as it is.
- **MySQL/MariaDB targets**: ``DateTime`` → ``DATETIME(6)`` and ``Time`` →
  ``TIME(6)`` (the generic types compile to whole seconds there and would drop
  microseconds); unbounded text → ``LONGTEXT`` and binary → ``LONGBLOB``
  (``TEXT``/``BLOB`` stop at 64 KiB); ``VARCHAR(n)`` over 255 → ``LONGTEXT``
  (keeps rows under MySQL's 64 KiB row-size limit); a string or binary column
  in a key, index or unique constraint → ``VARCHAR(n)``/``VARBINARY(n)`` with
  ``n`` the source length, or 255 for unbounded text, at most 768 (MySQL
  cannot index ``TEXT`` without a prefix length, and a prefix index would
  make a unique key compare prefixes only; 768 utf8mb4 characters are
  InnoDB's 3072-byte key limit; a longer value fails loudly on insert);
  ``DECIMAL`` without precision → ``DECIMAL(65, 30)`` (MySQL's default is
  ``DECIMAL(10, 0)``, which would round).  Every string column gets a binary,
  no-pad ``utf8mb4`` collation, so that keys compare as they do on
  PostgreSQL and SQLite (MariaDB's default collations ignore case and
  trailing spaces, which would merge distinct keys).
- **Nullability** and the **primary key** (composite too) are copied;
  **autoincrement** is off: values are copied, never generated.  Identity,
  computed columns and comments are not copied (a computed column would
  refuse the copied values).
- **Indexes** and **unique constraints** are copied by column; expression
  indexes are skipped, and so are partial indexes across families (their
  predicate is dialect SQL).  Names are kept, prefixed with the table name
  where the engine scopes them wider than a table (PostgreSQL and SQLite index
  names, MySQL foreign-key names) and shortened with a hash to the engine's
  limit.  **Check constraints** are not copied: their SQL is not portable.
- **Foreign keys** are created only to tables that exist at the target or are
  created in the same :func:`copy_tables` call; others are left out.
- **Server defaults** are dropped unless portable: a numeric literal, a quoted
  string literal (a PostgreSQL ``::type`` cast removed), or true/false on a
  boolean column.  Functions (``now()``, ``CURRENT_TIMESTAMP``, sequences) are
  dropped: copied rows carry their values, and defaults for the
  application's new rows belong to its own migrations.  MySQL cannot default
  a TEXT, BLOB or JSON column to a literal, so those lose theirs there.

An existing table is never touched: it is reflected and returned as it is.
:func:`refine_reflected` corrects reflected types that would read values
inexactly (MySQL ``DOUBLE`` as a ten-place ``Decimal``, MariaDB ``JSON`` as
``LONGTEXT``); every table this module returns has been refined.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.schema import sort_tables
from sqlalchemy.sql.elements import False_, True_

from domicile.errors import PermanentConnectorError

_FAMILIES = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
MYSQL_MAX_KEY_CHARS = 768  # InnoDB's 3072-byte index key limit / 4 bytes per utf8mb4 character
MYSQL_DEFAULT_KEY_CHARS = 255
MYSQL_MAX_VARCHAR = 255  # longer strings become LONGTEXT unless they are keys
_MYSQL_MAX_NAME = 64


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


def family(dialect: sa.engine.Dialect | str) -> str:
    """The engine family of a dialect: ``postgresql``, ``mysql`` (and MariaDB) or ``sqlite``."""
    name = dialect if isinstance(dialect, str) else dialect.name
    return _FAMILIES.get(name, name)


def _type_family(type_: sa.types.TypeEngine[Any]) -> str | None:
    """The family a dialect-specific type belongs to; None for a generic type."""
    match = re.match(r"sqlalchemy\.dialects\.(\w+)\.", type(type_).__module__)
    return family(match.group(1)) if match else None


# -- reflection that reads values exactly --------------------------------------


def _mariadb_json_columns(table: sa.Table, bind: sa.Engine | sa.Connection) -> set[str]:
    """Columns MariaDB declared as JSON: LONGTEXT with a ``json_valid`` check.

    MariaDB has no JSON type; SQLAlchemy reflects such a column as LONGTEXT
    and does not reflect column-level checks, so ask information_schema.
    """
    query = sa.text(
        "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
        " WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
    )
    params = {"schema": table.schema, "table": table.name}
    if isinstance(bind, sa.Connection):
        rows = bind.execute(query, params).all()
    else:
        with bind.connect() as conn:
            rows = conn.execute(query, params).all()
    found = set()
    for name, clause in rows:
        match = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", clause or "")
        if match and match.group(1).replace("``", "`") == name:
            found.add(name)
    return found


def refine_reflected(table: sa.Table, bind: sa.Engine | sa.Connection) -> sa.Table:
    """Correct, in place, reflected column types that would read values inexactly.

    - MySQL/MariaDB ``DOUBLE``/``REAL`` reflect with ``asdecimal=True`` and are
      read as a ``Decimal`` rounded to ten places: they become floats again.
    - MariaDB ``JSON`` columns reflect as ``LONGTEXT``: they get the JSON type,
      so documents are parsed like on the other engines.

    Idempotent; call it right after reflection, before building statements.
    Returns *table*.
    """
    if family(bind.dialect) != "mysql":
        return table
    is_mariadb = bool(getattr(bind.dialect, "is_mariadb", False))
    json_columns = _mariadb_json_columns(table, bind) if is_mariadb else set()
    for column in table.columns:
        t = column.type
        new: sa.types.TypeEngine[Any] | None = None
        if isinstance(t, mysql.DOUBLE | mysql.REAL) and t.asdecimal:
            new = type(t)(
                precision=t.precision,
                scale=t.scale,
                asdecimal=False,
                unsigned=getattr(t, "unsigned", False),
            )
        elif column.name in json_columns and not isinstance(t, sa.JSON):
            new = mysql.JSON()
        if new is not None:
            column.type = new
            # a Column memoizes its comparator, which carries the type
            column._reset_memoizations()
    return table


# -- type translation ------------------------------------------------------------


def _cannot(column: sa.Column[Any], target: str, why: str = "") -> PermanentConnectorError:
    return PermanentConnectorError(
        f"cannot create column {column.table.name}.{column.name} of type {column.type!r}"
        f" on {target}{': ' + why if why else ''}",
        where=f"table {column.table.name}",
        hint="create the table at the home store yourself; domicile then uses it as it is",
    )


def _generic_type(column: sa.Column[Any], target: str) -> sa.types.TypeEngine[Any]:
    """A generic SQLAlchemy type for *column*'s reflected type (cross-family copy)."""
    t: sa.types.TypeEngine[Any] = column.type
    while isinstance(t, sa.types.TypeDecorator):
        t = t.impl_instance
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
    except NotImplementedError as exc:
        raise _cannot(column, target) from exc
    if _type_family(generic) is not None:
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
    source = _type_family(column.type)
    if source == target:
        t = column.type.copy()
        if target == "mysql" and isinstance(t, mysql.types._StringType) and not t.collation:
            t.collation = _mysql_collation(target_dialect)
        return t
    generic = _generic_type(column, target)
    if target == "mysql":
        return _for_mysql(generic, keyed, target_dialect)
    return generic


# -- server defaults ---------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_QUOTED = re.compile(r"'(?:[^']|'')*'")
_PG_CAST = re.compile(r"^(.*?)::[\w\s\"\[\]\.()]+$", re.S)


def portable_default(
    column: sa.Column[Any], new_type: sa.types.TypeEngine[Any], target: str
) -> Any:
    """The server default to give the copied column, or None to drop it.

    A plain string default (a table defined in Python) is a literal value;
    a reflected default is SQL text, kept only when it is a literal.
    """
    default = column.server_default
    if not isinstance(default, sa.DefaultClause):
        return None
    if isinstance(new_type, sa.JSON | sa.types._Binary):
        return None
    if target == "mysql" and isinstance(new_type, sa.Text):
        return None
    arg = default.arg
    if isinstance(arg, str):
        return None if isinstance(new_type, sa.Boolean) else arg
    if isinstance(arg, True_ | False_):
        return arg if isinstance(new_type, sa.Boolean) else None
    if not isinstance(arg, sa.TextClause):
        return None  # a function or expression
    text = arg.text.strip()
    while True:  # PostgreSQL writes 'x'::character varying, (0)::numeric
        match = _PG_CAST.match(text)
        if not match:
            break
        text = match.group(1).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if isinstance(new_type, sa.Boolean):
        lowered = text.strip("'").lower()
        if lowered in ("true", "1"):
            return sa.true()
        if lowered in ("false", "0"):
            return sa.false()
        return None
    if _NUMBER.fullmatch(text) or _QUOTED.fullmatch(text):
        return sa.text(text)
    return None


# -- names ---------------------------------------------------------------------------


def _name(name: Any, table: str, wide_scope: bool, dialect: sa.engine.Dialect) -> str | None:
    """A constraint or index name usable at the target (see the module docstring)."""
    if not name:
        return None
    text = str(name)
    if wide_scope and table.lower() not in text.lower():
        text = f"{table}_{text}"
    limit = dialect.max_identifier_length
    if family(dialect) == "mysql":
        limit = min(limit, _MYSQL_MAX_NAME)
    if len(text) > limit:
        suffix = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = f"{text[: limit - 9]}_{suffix}"
    return text


# -- tables --------------------------------------------------------------------------


def _keyed_columns(table: sa.Table) -> set[str]:
    """Columns in a key, index, unique or foreign key, or that another table refers to."""
    names = {c.name for c in table.primary_key.columns}
    for index in table.indexes:
        names.update(c.name for c in index.columns)
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint | sa.ForeignKeyConstraint):
            names.update(c.name for c in constraint.columns)
    for other in table.metadata.tables.values():  # columns other tables refer to
        for fk in other.foreign_keys:
            if fk.column.table is table:
                names.add(fk.column.name)
    return names


def _build(
    source: sa.Table,
    md: sa.MetaData,
    dialect: sa.engine.Dialect,
    available: set[str],
    include_foreign_keys: bool,
) -> sa.Table:
    """The target definition of *source* in *md* (not yet created)."""
    target = family(dialect)
    keyed = _keyed_columns(source)
    columns = []
    for col in source.columns:
        new_type = target_type(col, dialect, keyed=col.name in keyed)
        columns.append(
            sa.Column(
                col.name,
                new_type,
                primary_key=col.primary_key,
                nullable=col.nullable,
                autoincrement=False,
                server_default=portable_default(col, new_type, target),
            )
        )
    wide = target in ("postgresql", "sqlite")
    items: list[Any] = []
    for constraint in source.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            items.append(
                sa.UniqueConstraint(
                    *[c.name for c in constraint.columns],
                    name=_name(constraint.name, source.name, wide, dialect),
                )
            )
        elif isinstance(constraint, sa.ForeignKeyConstraint) and include_foreign_keys:
            referred = constraint.referred_table.name
            if referred not in available:
                continue  # the parent is not at the target: no constraint to make
            ondelete, onupdate = constraint.ondelete, constraint.onupdate
            if target == "mysql":  # InnoDB rejects SET DEFAULT
                ondelete = None if (ondelete or "").upper() == "SET DEFAULT" else ondelete
                onupdate = None if (onupdate or "").upper() == "SET DEFAULT" else onupdate
            items.append(
                sa.ForeignKeyConstraint(
                    [c.name for c in constraint.columns],
                    [f"{referred}.{e.column.name}" for e in constraint.elements],
                    name=_name(constraint.name, source.name, target == "mysql", dialect),
                    ondelete=ondelete,
                    onupdate=onupdate,
                )
            )
    for index in source.indexes:
        if any(not isinstance(e, sa.Column) for e in index.expressions):
            continue  # an expression index: its SQL is dialect-specific
        # Dialect options (mysql_length, postgresql_using, sqlite_where...) are
        # kept for the target's own family; a predicate of another family
        # cannot be translated, and the index without it could refuse rows.
        options = {}
        for key, value in index.dialect_kwargs.items():
            if family(key.split("_", 1)[0]) == target:
                options[key] = value
            elif key.endswith("_where") and value is not None:
                break
        else:
            options = {k: v for k, v in options.items() if v is not None}
            items.append(
                sa.Index(
                    _name(index.name, source.name, wide, dialect),
                    *[c.name for c in index.columns],
                    unique=bool(index.unique),
                    **options,
                )
            )
    kwargs: dict[str, Any] = {}
    if target == "mysql":
        kwargs = {"mysql_charset": "utf8mb4", "mysql_collate": _mysql_collation(dialect)}
    return sa.Table(source.name, md, *columns, *items, **kwargs)


def copy_tables(
    source_tables: Sequence[sa.Table],
    target_engine: sa.Engine,
    include_foreign_keys: bool = True,
) -> list[sa.Table]:
    """Create each source table at the target unless it exists; parents first.

    Returns the target's tables as reflected (and refined) after creation, in
    dependency order (a table after the tables its foreign keys point to).  A
    table that already exists is left untouched and returned as reflected.
    Driver errors propagate: wrap the call in the store's error translation.
    """
    dialect = target_engine.dialect
    existing = set(sa.inspect(target_engine).get_table_names())
    wanted = [t.name for t in source_tables]
    to_create = [t for t in source_tables if t.name not in existing]
    available = existing | {t.name for t in to_create}
    md = sa.MetaData()
    with target_engine.begin() as conn:
        for source in source_tables:  # parents that already exist, for FK resolution
            for fk in source.foreign_keys:
                name = fk.column.table.name
                if name in existing and name not in md.tables:
                    refine_reflected(sa.Table(name, md, autoload_with=conn), conn)
        new = [_build(t, md, dialect, available, include_foreign_keys) for t in to_create]
        for table in new:
            for fk in table.foreign_keys:
                parent = md.tables[fk.target_fullname.rsplit(".", 1)[0]]
                if fk.target_fullname.rsplit(".", 1)[1] not in parent.c:
                    raise PermanentConnectorError(
                        f"table {table.name} refers to {fk.target_fullname},"
                        f" but {parent.name} at the target has no such column",
                        where=f"table {table.name}",
                        hint="add the column at the target, or copy without foreign keys",
                    )
        md.create_all(conn, tables=new, checkfirst=True)
    reflected = sa.MetaData()
    with target_engine.connect() as conn:
        tables = [
            refine_reflected(sa.Table(name, reflected, autoload_with=conn), conn) for name in wanted
        ]
    order = {t.name: i for i, t in enumerate(sort_tables(reflected.tables.values()))}
    return sorted(tables, key=lambda t: order[t.name])


def copy_table_definition(
    source_table: sa.Table, target_engine: sa.Engine, include_foreign_keys: bool = True
) -> sa.Table:
    """Create *source_table* at the target unless it exists; return it as reflected there.

    Foreign keys are created only to tables that already exist at the target.
    """
    return copy_tables([source_table], target_engine, include_foreign_keys)[0]


def missing_columns(source: sa.Table, target: sa.Table) -> list[str]:
    """Columns of *source* that *target* lacks, in source order (names match exactly).

    A move into a home table that lacks a column would lose that column's
    values, so the caller refuses it.
    """
    have = {c.name for c in target.columns}
    return [c.name for c in source.columns if c.name not in have]
