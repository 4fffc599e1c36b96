"""Server defaults and check constraints of home tables: copied, translated or refused.

Across engine families only a known, small language is translated (see
:mod:`domicile.connectors.schema`); everything else is refused by name.  A
check is parsed into a tree of that language and written again for the
target, so a form outside it cannot slip through half-translated.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.elements import False_, True_

from domicile.connectors.ddl_common import family, quote_string, sql_text

# -- server defaults -------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_QUOTED = re.compile(r"'(?:[^']|'')*'")
_PG_CAST = re.compile(r"^(.*?)::[\w\s\"\[\]\.()]+$", re.S)


def _strip(text: str) -> str:
    """*text* without PostgreSQL ``::type`` casts and enclosing parentheses."""
    text = text.strip()
    while True:
        before = text
        match = _PG_CAST.match(text)
        if match:
            text = match.group(1).strip()
        if text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
            text = text[1:-1].strip()
        if text == before:
            return text


def _balanced(text: str) -> bool:
    depth = 0
    for char in re.sub(r"'(?:[^']|'')*'", "''", text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def portable_default(
    column: sa.Column[Any], new_type: sa.types.TypeEngine[Any], target: str
) -> Any:
    """The literal server default to give the copied column, or None when it is no literal.

    A plain string default (a table defined in Python) is a literal value;
    a reflected default is SQL text, kept only when it is a numeric or quoted
    string literal (a PostgreSQL ``::type`` cast removed), or true/false on a
    boolean column.
    """
    default = column.server_default
    if not isinstance(default, sa.DefaultClause):
        return None
    if isinstance(new_type, sa.types._Binary):
        return None
    arg = default.arg
    if isinstance(arg, str):
        return None if isinstance(new_type, sa.Boolean) else arg
    if isinstance(arg, True_ | False_):
        return arg if isinstance(new_type, sa.Boolean) else None
    if not isinstance(arg, sa.TextClause):
        return None  # a function or expression
    text = _strip(arg.text)
    if isinstance(new_type, sa.Boolean):
        lowered = text.strip("'").lower()
        if lowered in ("true", "1"):
            return sa.true()
        if lowered in ("false", "0"):
            return sa.false()
        return None
    if _NUMBER.fullmatch(text) or _QUOTED.fullmatch(text):
        return sql_text(text)
    return None


# the current date and time, in every family's spellings (compared case-blind, blanks out)
_NOW = {
    "now()",
    "current_timestamp",
    "current_timestamp()",
    "localtimestamp",
    "localtimestamp()",
    "transaction_timestamp()",
    "datetime('now')",
    "now(6)",
    "current_timestamp(6)",
    "localtimestamp(6)",
    "datetime('now','localtime')",
    "sysdate()",
}
_TODAY = {"current_date", "current_date()", "curdate()", "date('now')"}
_CLOCK = {"current_time", "current_time()", "curtime()", "localtime", "time('now')"}
_CLOCK6 = {"current_time(6)", "curtime(6)", "localtime(6)"}


def _clock_kind(text: str) -> str | None:
    key = re.sub(r"\s+", "", _strip(text)).lower()
    key = re.sub(r"^current_timestamp\((\d)\)$", "current_timestamp(6)", key)
    if key in _NOW:
        return "now"
    if key in _TODAY:
        return "today"
    if key in _CLOCK or key in _CLOCK6:
        return "clock"
    return None


def _clock_default(kind: str, new_type: sa.types.TypeEngine[Any], target: str) -> str | None:
    """The target's spelling of the current timestamp, date or time for *new_type*."""
    if target == "postgresql":
        return {"now": "CURRENT_TIMESTAMP", "today": "CURRENT_DATE", "clock": "LOCALTIME"}[kind]
    if target == "sqlite":
        return {"now": "CURRENT_TIMESTAMP", "today": "CURRENT_DATE", "clock": "CURRENT_TIME"}[kind]
    fsp = getattr(new_type, "fsp", None)
    suffix = f"({fsp})" if fsp else ""
    if kind == "now":
        return f"CURRENT_TIMESTAMP{suffix}"
    return "(CURRENT_DATE)" if kind == "today" else f"(CURRENT_TIME{suffix})"


def translate_default(
    column: sa.Column[Any], new_type: sa.types.TypeEngine[Any], target: str
) -> tuple[Any, str | None]:
    """The server default for *column* at another engine family: ``(default, refusal)``.

    *default* is what to give ``server_default`` (None: no default); *refusal*
    is None, or why the source's default cannot be made at *target*.
    """
    default = column.server_default
    if default is None:
        return None, None
    if not isinstance(default, sa.DefaultClause):
        return None, "not a server default SQLAlchemy can read"
    arg = default.arg
    text = arg.text if isinstance(arg, sa.TextClause) else None
    if text is not None and _strip(text).upper() == "NULL":
        return None, None  # the default default
    if text is not None and re.search(r"\bON\s+UPDATE\b", text, re.I):
        return None, "ON UPDATE has no counterpart on other engines (it would need a trigger)"
    literal = portable_default(column, new_type, target)
    if literal is not None:
        if target == "mysql" and isinstance(new_type, sa.Text | sa.JSON | mysql.LONGTEXT):
            # MySQL takes a literal default for TEXT and JSON only as an expression
            if isinstance(literal, sa.TextClause):
                return sql_text(f"({literal.text})"), None
            if isinstance(literal, str):
                return sql_text(f"({quote_string(literal, 'mysql')})"), None
        return literal, None
    if isinstance(new_type, sa.types._Binary):
        return None, "binary defaults are not translated"
    if text is not None:
        kind = _clock_kind(text)
        wanted = {"now": sa.DateTime, "today": sa.Date, "clock": sa.Time}
        if kind is not None and isinstance(new_type, wanted[kind]):
            return sql_text(_clock_default(kind, new_type, target) or ""), None
        if kind is not None:
            return None, f"the current {kind} does not fit a column of type {new_type}"
    return None, "only literals and the current date and time are translated"


_PLAIN_DEFAULT = re.compile(
    r"""\s*(NULL|TRUE|FALSE|[+-]?\d+(\.\d*)?([eE][+-]?\d+)?|'(?:[^']|'')*'|[xX]'[0-9a-fA-F]*'
    |CURRENT_(TIMESTAMP|DATE|TIME)(\(\d?\))?(\s+ON\s+UPDATE\s+CURRENT_TIMESTAMP(\(\d?\))?)?)\s*""",
    re.I | re.X,
)


def same_family_default(column: sa.Column[Any], target: str) -> Any:
    """The server default copied verbatim within an engine family.

    SQLite and MySQL read an expression default only in parentheses, which
    their reflection leaves out (``datetime('now')``): they are put back.
    """
    default = column.server_default
    if not isinstance(default, sa.DefaultClause):
        return None
    arg = default.arg
    if not isinstance(arg, sa.TextClause):
        return arg
    text = arg.text.strip()
    if target in ("sqlite", "mysql") and not _PLAIN_DEFAULT.fullmatch(text):
        if target == "mysql" and re.fullmatch(r"\w+\(\d?\)(\s+ON\s+UPDATE\s+.*)?", text, re.I):
            return sql_text(text)  # current_timestamp(), curdate(): MariaDB's own spelling
        if not (text.startswith("(") and text.endswith(")") and _balanced(text[1:-1])):
            text = f"({text})"
    return sql_text(text)


# -- check constraints -------------------------------------------------------------------


class Untranslatable(Exception):
    """A check outside the portable forms."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|''|\\.)*')
    | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<qid>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    | (?P<op>::|<=|>=|<>|!=|=|<|>|\(|\)|,|\[|\]|-)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    )""",
    re.X,
)
_KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "BETWEEN", "IN", "TRUE", "FALSE", "ANY", "ARRAY"}
_LENGTH = {"length", "char_length", "character_length"}
_CASTS = {
    "text",
    "character varying",
    "varchar",
    "character",
    "bpchar",
    "numeric",
    "integer",
    "bigint",
    "smallint",
    "double precision",
    "real",
    "boolean",
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
}


def _tokens(text: str, source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise Untranslatable(f"cannot read {text[pos : pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            body = value[1:-1]
            if source == "mysql":
                body = re.sub(
                    r"\\(.)",
                    lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m.group(1), m.group(1)),
                    body,
                )
            value = body.replace("''", "'")
            if out and out[-1][0] == "word" and out[-1][1].startswith("_"):
                out.pop()  # a MySQL character set introducer: _utf8mb4'x'
        elif kind == "qid":
            value = value[1:-1].replace(value[0] * 2, value[0])
        out.append((kind, value))
    return out


class _Parser:
    """Recursive descent over the portable check language; the tree is nested tuples."""

    def __init__(self, tokens: list[tuple[str, str]], columns: dict[str, str], value: str | None):
        self.toks = tokens
        self.i = 0
        self.columns = columns  # lower-cased name -> column name
        self.value = value  # the column a domain's VALUE stands for

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def word(self, *words: str) -> bool:
        kind, value = self.peek()
        if kind == "word" and value.upper() in words:
            self.i += 1
            return True
        return False

    def op(self, *ops: str) -> str | None:
        kind, value = self.peek()
        if kind == "op" and value in ops:
            self.i += 1
            return value
        return None

    def expect(self, op: str) -> None:
        if not self.op(op):
            raise Untranslatable(f"expected {op!r} at {self.peek()[1]!r}")

    def parse(self) -> Any:
        tree = self.or_()
        if self.peek()[0] != "end":
            raise Untranslatable(f"unexpected {self.peek()[1]!r}")
        return tree

    def or_(self) -> Any:
        items = [self.and_()]
        while self.word("OR"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else ("or", items)

    def and_(self) -> Any:
        items = [self.not_()]
        while self.word("AND"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else ("and", items)

    def not_(self) -> Any:
        if self.word("NOT"):
            return ("not", self.not_())
        return self.predicate()

    def predicate(self) -> Any:
        if self.peek() == ("op", "(") and self._is_group():
            self.i += 1
            tree = self.or_()
            self.expect(")")
            return tree
        left = self.operand()
        if self.word("IS"):
            negated = self.word("NOT")
            if not self.word("NULL"):
                raise Untranslatable("IS without NULL")
            return ("isnull", left, negated)
        negated = self.word("NOT")
        if self.word("BETWEEN"):
            low = self.operand()
            if not self.word("AND"):
                raise Untranslatable("BETWEEN without AND")
            return ("between", left, low, self.operand(), negated)
        if self.word("IN"):
            self.expect("(")
            items = [self.operand()]
            while self.op(","):
                items.append(self.operand())
            self.expect(")")
            return ("in", left, items, negated)
        if negated:
            raise Untranslatable("NOT in an unknown place")
        op = self.op("=", "<>", "!=", "<", "<=", ">", ">=")
        if op is None:
            raise Untranslatable("a comparison was expected")
        if op in ("=", "<>", "!=") and self.word("ANY", "ALL"):
            return ("in", left, self._array(), op != "=")  # PostgreSQL's IN: = ANY (ARRAY[...])
        return ("cmp", "<>" if op == "!=" else op, left, self.operand())

    def _is_group(self) -> bool:
        """At '(': a parenthesised condition (not an operand like ``(x)::text = 'a'``)."""
        depth, j = 0, self.i
        while j < len(self.toks):
            kind, value = self.toks[j]
            depth += {"(": 1, ")": -1}.get(value, 0) if kind == "op" else 0
            if depth == 0:
                nxt = self.toks[j + 1] if j + 1 < len(self.toks) else ("end", "")
                return not (
                    nxt[0] == "op" and nxt[1] in ("::", "=", "<>", "!=", "<", "<=", ">", ">=")
                ) and not (nxt[0] == "word" and nxt[1].upper() in ("IS", "BETWEEN", "IN", "NOT"))
            j += 1
        return True

    def _array(self) -> list[Any]:
        self.expect("(")
        parens = 0
        while self.op("("):
            parens += 1
        if not self.word("ARRAY"):
            raise Untranslatable("ANY without ARRAY")
        self.expect("[")
        items = [self.operand()]
        while self.op(","):
            items.append(self.operand())
        self.expect("]")
        for _ in range(parens):
            self.expect(")")
            self._casts()
        self._casts()
        self.expect(")")
        return items

    def _casts(self) -> list[str]:
        casts = []
        while self.op("::"):
            words: list[str] = []
            while self.peek()[0] in ("word", "qid"):
                candidate = " ".join([*words, self.peek()[1].lower()])
                if words and not any(t.startswith(candidate) for t in _CASTS):
                    break  # the type name ended: AND, OR... follow
                words.append(self.peek()[1].lower())
                self.i += 1
            if self.op("("):
                while self.peek()[0] == "num" or self.peek() == ("op", ","):
                    self.i += 1
                self.expect(")")
            while self.op("["):
                self.expect("]")
                words.append("[]")
            casts.append(" ".join(words).replace(" []", "[]"))
        return casts

    def operand(self) -> Any:
        kind, value = self.peek()
        negative = False
        if kind == "op" and value == "-":
            self.i += 1
            negative = True
            kind, value = self.peek()
        self.i += 1
        if kind == "num":
            node: Any = ("num", f"-{value}" if negative else value)
        elif negative:
            raise Untranslatable("a minus sign before something other than a number")
        elif kind == "str":
            node = ("str", value)
        elif kind == "op" and value == "(":
            node = self.operand()
            self.expect(")")
        elif kind == "word" and value.upper() in ("TRUE", "FALSE"):
            node = ("bool", value.upper() == "TRUE")
        elif kind == "word" and value.upper() == "NULL":
            node = ("null",)
        elif kind == "word" and self.peek() == ("op", "("):
            self.i += 1
            name = value.lower()
            if name not in _LENGTH | {"lower", "upper"}:
                raise Untranslatable(f"function {value}() is not translated")
            arg = self.operand()
            self.expect(")")
            node = ("func", name, arg)
        elif kind == "word" and value.upper() == "VALUE" and self.value is not None:
            node = ("col", self.value)
        elif kind in ("word", "qid"):
            found = self.columns.get(value.lower()) if kind == "word" else value
            if kind == "qid" and value not in self.columns.values():
                found = None
            if found is None or (kind == "word" and value.upper() in _KEYWORDS):
                raise Untranslatable(f"{value} is not a column of the table")
            node = ("col", found)
        else:
            raise Untranslatable(f"unexpected {value!r}")
        for cast in self._casts():
            if cast.rstrip("[]") not in _CASTS:
                raise Untranslatable(f"a cast to {cast} is not translated")
        return node


def _render(node: Any, dialect: sa.engine.Dialect, types: dict[str, Any], target: str) -> str:
    quote = dialect.identifier_preparer.quote
    kind = node[0]

    def sub(n: Any) -> str:
        return _render(n, dialect, types, target)

    def value(n: Any, column: Any) -> str:
        """A literal, as TRUE/FALSE when compared with a boolean column (0/1 on MySQL)."""
        is_bool = (
            column is not None
            and column[0] == "col"
            and isinstance(types.get(column[1]), sa.Boolean)
        )
        if is_bool and n[0] == "num" and n[1] in ("0", "1"):
            return "TRUE" if n[1] == "1" else "FALSE"
        return sub(n)

    if kind == "col":
        return str(quote(node[1]))
    if kind == "num":
        return str(node[1])
    if kind == "str":
        return quote_string(node[1], target)
    if kind == "bool":
        return "TRUE" if node[1] else "FALSE"
    if kind == "null":
        return "NULL"
    if kind == "func":
        name = node[1]
        if name in _LENGTH:
            name = "CHAR_LENGTH" if target == "mysql" else "length"
        return f"{name}({sub(node[2])})"
    if kind == "cmp":
        return f"{sub(node[2])} {node[1]} {value(node[3], node[2])}"
    if kind == "isnull":
        return f"{sub(node[1])} IS {'NOT ' if node[2] else ''}NULL"
    if kind == "between":
        no = "NOT " if node[4] else ""
        return f"{sub(node[1])} {no}BETWEEN {value(node[2], node[1])} AND {value(node[3], node[1])}"
    if kind == "in":
        items = ", ".join(value(i, node[1]) for i in node[2])
        return f"{sub(node[1])} {'NOT ' if node[3] else ''}IN ({items})"
    if kind == "not":
        return f"NOT ({sub(node[1])})"
    joiner = " AND " if kind == "and" else " OR "
    return "(" + joiner.join(sub(n) for n in node[1]) + ")"


def translate_check(
    text: str,
    source: str | None,
    dialect: sa.engine.Dialect,
    types: dict[str, sa.types.TypeEngine[Any]],
    value_of: str | None = None,
) -> str:
    """A check's SQL *text* from engine family *source*, written for *dialect*.

    *types* are the target table's column types by name; *value_of* names the
    column a domain check's ``VALUE`` stands for.  Raises :class:`Untranslatable`
    for anything outside the portable forms (comparisons of columns, literals
    and ``length``/``lower``/``upper`` of a column; BETWEEN; IN lists; IS [NOT]
    NULL; NOT, AND, OR of these).
    """
    target = family(dialect)
    if source == "mysql" and re.search(r"\blength\s*\(", text, re.I):
        raise Untranslatable("MySQL's length() counts bytes, not characters")
    columns = {name.lower(): name for name in types}
    tree = _Parser(_tokens(text, source or ""), columns, value_of).parse()
    return _render(tree, dialect, types, target)
