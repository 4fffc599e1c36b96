"""The target definition of source tables, and the statements that create it.

Pure: nothing here touches a database.  :mod:`domicile.connectors.schema`
holds the rules and runs the statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from domicile.connectors.ddl_common import (
    SchemaProblem,
    family,
    is_reflected,
    object_name,
    quote_string,
    source_family,
    sql_text,
)
from domicile.connectors.ddl_exprs import (
    Untranslatable,
    same_family_default,
    translate_check,
    translate_default,
)
from domicile.connectors.ddl_types import NamedType, _mysql_collation, named_types, target_type
from domicile.connectors.fk_cycles import creation_order, cyclic_constraints
from domicile.connectors.sequences import Generated, generated_of
from domicile.errors import PermanentConnectorError


@dataclass
class Plan:
    """What creating some tables at a target takes, in the order it is done."""

    md: sa.MetaData
    tables: list[sa.Table] = field(default_factory=list)  # in creation order
    types: list[NamedType] = field(default_factory=list)  # PostgreSQL enums and domains
    sequences: dict[str, str] = field(default_factory=dict)  # name -> CREATE SEQUENCE
    after: list[Any] = field(default_factory=list)  # ADD CONSTRAINT, OWNED BY
    owned: dict[str, Any] = field(default_factory=dict)  # sequence name -> OWNED BY statement
    problems: list[SchemaProblem] = field(default_factory=list)

    def statements(
        self, dialect: sa.engine.Dialect, have_types: set[str], have_sequences: set[str]
    ) -> list[Any]:
        """The DDL elements, in order, skipping types and sequences the target has."""
        out: list[Any] = []
        seen: set[str] = set()
        for named in self.types:
            if named.name not in have_types and named.name not in seen:
                seen.add(named.name)
                out.append(sql_text(named.create_sql(dialect)))
        for name, create in self.sequences.items():
            if name not in have_sequences:
                out.append(sql_text(create))
        inline = family(dialect) == "sqlite"  # SQLite has no ADD CONSTRAINT; it needs none
        for table in self.tables:
            fks = [fk for fk in table.foreign_key_constraints if inline or not fk.use_alter]
            out.append(sa.schema.CreateTable(table, include_foreign_key_constraints=fks))
            out.extend(sa.schema.CreateIndex(index) for index in table.indexes)
        out.extend(self.after)
        out.extend(s for name, s in self.owned.items() if name not in have_sequences)
        return out


def keyed_columns(table: sa.Table) -> set[str]:
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


def _text_of(clause: Any) -> str:
    if isinstance(clause, sa.TextClause):
        return clause.text
    return str(clause.compile(compile_kwargs={"literal_binds": True}))


class _Builder:
    """Builds one target table, collecting what it needs and what it cannot make."""

    def __init__(self, source: sa.Table, plan: Plan, dialect: sa.engine.Dialect) -> None:
        self.source = source
        self.plan = plan
        self.dialect = dialect
        self.target = family(dialect)
        self.family = source_family(source)
        # a table defined in Python: its SQL is its author's, as create_all would emit it
        self.same = self.family == self.target or (self.family is None and not is_reflected(source))
        self.generated = generated_of(source)
        self.items: list[Any] = []
        self.types: dict[str, sa.types.TypeEngine[Any]] = {}
        self.kwargs: dict[str, Any] = {}
        self.ok = True

    def refuse(
        self, column: str | None, what: str, why: str, constraint: str | None = None
    ) -> None:
        self.ok = False
        self.plan.problems.append(SchemaProblem(self.source.name, column, constraint, what, why))

    def check_name(self, name: Any) -> str | None:
        return object_name(name, self.source.name, self.target == "mysql", self.dialect)

    # -- columns -----------------------------------------------------------------

    def _generated_column(self, col: sa.Column[Any], new_type: Any) -> tuple[Any, dict[str, Any]]:
        """The type and Column arguments that make *col* generated at the target."""
        gen = self.generated
        assert gen is not None
        pk = list(self.source.primary_key.columns)
        single = len(pk) == 1 and pk[0] is col and isinstance(col.type, sa.Integer)
        quote = self.dialect.identifier_preparer.quote
        if self.target == "postgresql" and self.same and gen.kind == "sequence" and gen.sequence:
            self._sequence(gen, col)
            literal = quote_string(quote(gen.sequence), "postgresql")
            return new_type, {"server_default": sql_text(f"nextval({literal}::regclass)")}
        if self.target == "postgresql" and self.same and gen.kind == "identity":
            # BY DEFAULT even for ALWAYS: copied rows are inserted with their keys
            return new_type, {"identity": sa.Identity(always=False, **gen.options)}
        if not (single or (self.same and self.target == "mysql")):
            self.refuse(
                col.name,
                f"generated column ({gen.kind})",
                f"only a single integer primary key is generated on {self.target}",
            )
            return new_type, {}
        if self.target == "postgresql":
            integer = new_type if isinstance(new_type, sa.Integer) else sa.BigInteger()
            return integer, {"identity": sa.Identity(always=False)}
        if self.target == "sqlite":
            # a rowid alias with AUTOINCREMENT, even from a plain rowid table: only
            # then can advance_sequences keep new keys past those a source still holds
            self.kwargs["sqlite_autoincrement"] = True
            return sa.INTEGER(), {"autoincrement": True}
        if self.target == "mysql" and not isinstance(new_type, sa.Integer):
            new_type = mysql.BIGINT(unsigned=True)  # MySQL's BIGINT UNSIGNED, kept wide
        return new_type, {"autoincrement": True}

    def _sequence(self, gen: Generated, col: sa.Column[Any]) -> None:
        quote = self.dialect.identifier_preparer.quote
        name = gen.sequence or ""
        opts = gen.options
        parts = [f"CREATE SEQUENCE {quote(name)}"]
        if opts.get("data_type"):
            parts.append(f"AS {opts['data_type']}")
        for key, word in (
            ("increment", "INCREMENT BY"),
            ("minvalue", "MINVALUE"),
            ("maxvalue", "MAXVALUE"),
            ("start", "START WITH"),
            ("cache", "CACHE"),
        ):
            if opts.get(key) is not None:
                parts.append(f"{word} {int(opts[key])}")
        if opts.get("cycle"):
            parts.append("CYCLE")
        self.plan.sequences.setdefault(name, " ".join(parts))
        if opts.get("owned", True):
            owner = f"{quote(self.source.name)}.{quote(col.name)}"
            self.plan.owned.setdefault(
                name, sql_text(f"ALTER SEQUENCE {quote(name)} OWNED BY {owner}")
            )

    def column(self, col: sa.Column[Any], keyed: bool) -> sa.Column[Any] | None:
        try:
            new_type = target_type(col, self.dialect, keyed=keyed)
        except PermanentConnectorError as exc:
            self.refuse(col.name, f"type {col.type!r}", str(exc).split(": ", 1)[-1].split("\n")[0])
            return None
        nullable = col.nullable and not col.primary_key  # SQLite reflects key columns nullable
        domain = col.type if isinstance(col.type, postgresql.DOMAIN) else None
        kwargs: dict[str, Any] = {"autoincrement": False}
        if self.generated is not None and self.generated.column == col.name:
            new_type, extra = self._generated_column(col, new_type)
            kwargs.update(extra)
            if "identity" in extra:
                kwargs.pop("autoincrement")
        elif self.same:
            default = same_family_default(col, self.target)
            own = domain.default if domain is not None else None
            own = own.text if isinstance(own, sa.TextClause) else own
            if own is not None and isinstance(default, sa.TextClause) and default.text == own:
                default = None  # the domain's own default, folded in by reflection
            kwargs["server_default"] = default
        else:
            default, why = translate_default(col, new_type, self.target)
            if why is not None:
                text = _text_of(getattr(col.server_default, "arg", ""))
                self.refuse(col.name, f"default {text}", why)
            kwargs["server_default"] = default
        if self.same and self.target == "postgresql":
            self.plan.types.extend(named_types(col))
        elif not self.same:
            self._type_checks(col, new_type)
            if domain is not None and domain.not_null:
                nullable = False
        self.types[col.name] = new_type
        return sa.Column(
            col.name,
            new_type,
            *[kwargs.pop("identity")] if "identity" in kwargs else [],
            primary_key=col.primary_key,
            nullable=nullable,
            **kwargs,
        )

    def _type_checks(self, col: sa.Column[Any], new_type: Any) -> None:
        """The checks a domain or an enum becomes across families."""
        quote = self.dialect.identifier_preparer.quote
        types = {**self.types, col.name: new_type}
        for named in named_types(col) if isinstance(col.type, postgresql.DOMAIN) else []:
            for name, check in named.checks if named.kind == "domain" else ():
                try:
                    text = translate_check(check, "postgresql", self.dialect, types, col.name)
                except Untranslatable as exc:
                    self.refuse(col.name, f"check {check} of domain {named.name}", str(exc), name)
                    continue
                self.items.append(
                    sa.CheckConstraint(
                        sql_text(text),
                        name=self.check_name(f"{self.source.name}_{col.name}_{name}"),
                    )
                )
        t = col.type
        while isinstance(t, postgresql.DOMAIN):
            t = t.data_type
        if isinstance(t, sa.Enum) and t.enums and isinstance(new_type, sa.String):
            labels = ", ".join(quote_string(label, self.target) for label in t.enums)
            self.items.append(
                sa.CheckConstraint(
                    sql_text(f"{quote(col.name)} IN ({labels})"),
                    name=self.check_name(f"{self.source.name}_{col.name}_check"),
                )
            )

    # -- constraints -----------------------------------------------------------------

    def check(self, constraint: sa.CheckConstraint) -> None:
        if getattr(constraint, "_type_bound", False):
            return  # made by a Python type (Boolean, Enum); the target type makes its own
        text = _text_of(constraint.sqltext)
        if self.same:
            self.items.append(
                sa.CheckConstraint(sql_text(text), name=self.check_name(constraint.name))
            )
            return
        try:
            translated = translate_check(text, self.family, self.dialect, self.types)
        except Untranslatable as exc:
            self.refuse(None, f"check {text}", str(exc), str(constraint.name or "") or None)
            return
        self.items.append(
            sa.CheckConstraint(sql_text(translated), name=self.check_name(constraint.name))
        )

    def foreign_key(self, fk: sa.ForeignKeyConstraint, cyclic: set[tuple[str, str]]) -> None:
        referred = fk.elements[0].target_fullname.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        ondelete, onupdate = fk.ondelete, fk.onupdate
        if self.target == "mysql":  # InnoDB rejects SET DEFAULT
            ondelete = None if (ondelete or "").upper() == "SET DEFAULT" else ondelete
            onupdate = None if (onupdate or "").upper() == "SET DEFAULT" else onupdate
        in_cycle = (self.source.name, referred) in cyclic
        name = fk.name
        if in_cycle and not name:  # ALTER TABLE ... ADD CONSTRAINT wants a name to show
            name = f"{self.source.name}_{'_'.join(c.name for c in fk.columns)}_fkey"
        deferrable, initially = None, None
        if self.target == "postgresql":
            if self.same:
                deferrable, initially = fk.deferrable, fk.initially
            # every key: checked per statement as usual, at commit once a loader defers it
            deferrable, initially = True, (initially if deferrable else None) or "IMMEDIATE"
        self.items.append(
            sa.ForeignKeyConstraint(
                [c.name for c in fk.columns],
                [f"{referred}.{e.column.name}" for e in fk.elements],
                name=object_name(name, self.source.name, self.target == "mysql", self.dialect),
                ondelete=ondelete,
                onupdate=onupdate,
                deferrable=deferrable,
                initially=initially,
                use_alter=in_cycle and self.target != "sqlite",
            )
        )

    def index(self, index: sa.Index) -> None:
        if any(not isinstance(e, sa.Column) for e in index.expressions):
            return  # an expression index: its SQL is dialect-specific
        # Dialect options (mysql_length, postgresql_using, sqlite_where...) are
        # kept for the target's own family; a predicate of another family
        # cannot be translated, and the index without it could refuse rows.
        options = {}
        for key, value in index.dialect_kwargs.items():
            if family(key.split("_", 1)[0]) == self.target:
                options[key] = value
            elif key.endswith("_where") and value is not None:
                return
        options = {k: v for k, v in options.items() if v is not None}
        wide = self.target in ("postgresql", "sqlite")
        self.items.append(
            sa.Index(
                object_name(index.name, self.source.name, wide, self.dialect),
                *[c.name for c in index.columns],
                unique=bool(index.unique),
                **options,
            )
        )


def _fk_target(fk: sa.ForeignKeyConstraint) -> str:
    return fk.elements[0].target_fullname.rsplit(".", 1)[0].rsplit(".", 1)[-1]


def build(
    to_create: Sequence[sa.Table],
    md: sa.MetaData,
    dialect: sa.engine.Dialect,
    available: set[str],
    include_foreign_keys: bool,
) -> Plan:
    """The plan to create *to_create* (source tables) in *md* at *dialect*."""
    plan = Plan(md)
    target = family(dialect)
    cyclic = cyclic_constraints(to_create) if include_foreign_keys else set()
    built = []
    for source in creation_order(list(to_create)):
        b = _Builder(source, plan, dialect)
        keyed = keyed_columns(source)
        columns = [b.column(col, col.name in keyed) for col in source.columns]
        for constraint in source.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                b.items.append(
                    sa.UniqueConstraint(
                        *[c.name for c in constraint.columns],
                        name=object_name(
                            constraint.name,
                            source.name,
                            target in ("postgresql", "sqlite"),
                            dialect,
                        ),
                    )
                )
            elif isinstance(constraint, sa.CheckConstraint):
                b.check(constraint)
            elif (
                isinstance(constraint, sa.ForeignKeyConstraint)
                and include_foreign_keys
                and _fk_target(constraint) in available
            ):
                b.foreign_key(constraint, cyclic)
        for index in source.indexes:
            b.index(index)
        if not b.ok:
            continue
        kwargs = dict(b.kwargs)
        if target == "mysql":
            kwargs.update(mysql_charset="utf8mb4", mysql_collate=_mysql_collation(dialect))
        built.append(
            sa.Table(source.name, md, *[c for c in columns if c is not None], *b.items, **kwargs)
        )
    plan.tables = built
    if target != "sqlite":
        for table in built:
            for fk in table.foreign_key_constraints:
                if fk.use_alter:
                    plan.after.append(sa.schema.AddConstraint(fk))
    return plan
