"""What the modules that create home tables share: engine families, names, problems.

See :mod:`domicile.connectors.schema` for the rules these serve.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domicile.errors import PermanentConnectorError

_FAMILIES = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
_MYSQL_MAX_NAME = 64
HINT = "create the table at the home store yourself; domicile then uses it as it is"

# Keys of Table.info that refine_reflected fills from the source's catalogue
INFO_FAMILY = "domicile.family"
INFO_GENERATED = "domicile.generated"  # dict describing the generated column, or None
INFO_DOMAINS = "domicile.domains"  # name -> every CHECK of a PostgreSQL domain
INFO_SEQUENCES = "domicile.sequences"  # sequence name -> its options (PostgreSQL)


def family(dialect: sa.engine.Dialect | str) -> str:
    """The engine family of a dialect: ``postgresql``, ``mysql`` (and MariaDB) or ``sqlite``."""
    name = dialect if isinstance(dialect, str) else dialect.name
    return _FAMILIES.get(name, name)


def type_family(type_: sa.types.TypeEngine[Any]) -> str | None:
    """The family a dialect-specific type belongs to; None for a generic type."""
    match = re.match(r"sqlalchemy\.dialects\.(\w+)\.", type(type_).__module__)
    return family(match.group(1)) if match else None


def source_family(table: sa.Table) -> str | None:
    """The engine family *table* was reflected from, or None when it is not known.

    Known when :func:`~domicile.connectors.schema.refine_reflected` saw it, or
    from a column of a dialect-specific type.  None for a table defined in
    Python with generic types.
    """
    known = table.info.get(INFO_FAMILY)
    if known:
        return str(known)
    for column in table.columns:
        found = type_family(column.type)
        if found is not None:
            return found
    return None


def is_reflected(table: sa.Table) -> bool:
    """True when some column default of *table* came from a database's catalogue."""
    if INFO_FAMILY in table.info:
        return True
    return any(
        isinstance(c.server_default, sa.DefaultClause) and c.server_default.reflected
        for c in table.columns
    )


@dataclass(frozen=True)
class SchemaProblem:
    """Something :func:`~domicile.connectors.schema.copy_tables` refuses to create.

    *what* names the offending definition with its SQL text (``type INTERVAL``,
    ``default lower('X')``, ``check typeof(x) = 'integer'``), *why* says why it
    cannot be made at the target, *hint* what to do.
    """

    table: str
    column: str | None
    constraint: str | None
    what: str
    why: str
    hint: str = HINT

    @property
    def message(self) -> str:
        place = self.table
        if self.column:
            place += f".{self.column}"
        if self.constraint:
            place += f" (constraint {self.constraint})"
        return f"cannot create {place}: {self.what}: {self.why}"

    def error(self) -> PermanentConnectorError:
        return PermanentConnectorError(self.message, where=f"table {self.table}", hint=self.hint)


def object_name(name: Any, table: str, wide_scope: bool, dialect: sa.engine.Dialect) -> str | None:
    """A constraint or index name usable at the target.

    Prefixed with the table name where the engine scopes it wider than a table
    (*wide_scope*), shortened with a hash to the engine's limit.
    """
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


def sql_text(text: str) -> sa.TextClause:
    """A ``text()`` construct of SQL that has no bound parameters (``:word`` stays as it is)."""
    return sa.text(re.sub(r"(?<![:\w\\]):(?=\w)", r"\\:", text))


def quote_string(value: str, target: str) -> str:
    """*value* as a SQL string literal at *target* (MySQL also reads backslash escapes)."""
    if target == "mysql":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"
