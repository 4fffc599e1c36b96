"""Checks of the data map that look across it: where each record can live.

:mod:`domicile.datamap` builds the model section by section; this module
holds what needs more than one entry at a time, or more than the YAML:

- database URLs (:func:`sql_url`, :func:`state_url`): parseable, never an
  in-memory SQLite and never a file under /proc, /sys or /dev;
- two store names for one place (:func:`check_places`);
- one table claimed by two datasets that can meet in a store
  (:func:`check_tables`), two object patterns matching one key in one store
  (:func:`check_objects`).

Each of these would let a run copy records onto themselves, or move and
delete one record twice, and so lose data without a word.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from domicile.connectors.dialects import dialect_for
from domicile.errors import ConfigError
from domicile.model import Dataset, Jurisdiction, Store
from domicile.state import resolve_sqlite_url
from domicile.yamlsafe import Located

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")
OBJECT_SCHEMES = ("file", "s3")
STATE_SCHEMES = ("sqlite", "postgresql")  # what state.py and the journal support
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # no URL or path needs one; drivers choke on NUL
# Pseudo-filesystems and devices: a database there is not a file, or is gone at reboot.
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))
MAX_PATTERN = 1024  # characters of an object pattern: S3 keys are at most 1024 bytes
OVERLAP_BUDGET = 250_000  # steps spent proving object patterns disjoint (~1 s at worst)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    if "://" not in url or url.startswith(("file:", "s3:")):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is reported by sql_url; never echo a secret
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def url_scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``; '' when there is no scheme."""
    head, colon, _ = url.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head):
        return ""
    return head.split("+", 1)[0].lower()


def resolved(path: Path, what: str, where: str) -> Path:
    """``path.resolve()``; a path that cannot be resolved is a ConfigError."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
        raise ConfigError(f"{what}: cannot resolve the path {path}: {exc}", where=where) from None


def sql_url(url: str, what: str, where: str, base: Path) -> str:
    """Check a database URL; a relative SQLite path is made absolute against *base*.

    Refused: a URL SQLAlchemy cannot parse, an in-memory SQLite database
    (everything moved there, or journalled there, vanishes when domicile
    exits) and a SQLite file under /proc, /sys or /dev.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(
            f"{what}: URL '{mask_url(url)}' is not a database URL",
            where=where,
            hint="use an SQLAlchemy URL (sqlite:///file.db, postgresql://user@host/db, "
            "mysql://...)",
        ) from None
    if not dialect_for(parsed.get_backend_name().lower()).file_based:
        return url
    db = parsed.database or ""
    if db in ("", ":memory:") or ":memory:" in db or parsed.query.get("mode") == "memory":
        raise ConfigError(
            f"{what}: an in-memory SQLite database loses everything when domicile exits",
            where=where,
            hint="name a file: sqlite:///path/to/file.db (relative to the map's folder)",
        )
    path = resolved(Path(db) if db.startswith("/") else base / db, what, where)
    for system in _SYSTEM_DIRS:
        if path == system or system in path.parents:
            raise ConfigError(
                f"{what}: SQLite file {path} is under {system}, which holds no real files",
                where=where,
                hint="put the database in an ordinary folder",
            )
    if url.startswith("sqlite:///"):
        return resolve_sqlite_url(url, base)
    # sqlite+driver:///relative: state.resolve_sqlite_url leaves it relative to the cwd
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def state_url(url: str, where: str, base: Path) -> str:
    """The state store's URL (journal, lease, audit log) checked; SQLite made absolute.

    Only SQLite and PostgreSQL hold the journal (see :mod:`domicile.state`).
    Anything that reads ``state:`` from a map should call this.
    """
    scheme = url_scheme(url)
    if CONTROL.search(url) or scheme not in STATE_SCHEMES:
        what = f"unsupported URL scheme '{scheme}'" if scheme else f"'{mask_url(url)}' is not a URL"
        raise ConfigError(
            f"state store: {what} (supported: {', '.join(STATE_SCHEMES)})",
            where=where,
            hint="the journal needs a transactional database: sqlite:///.domicile/state.db "
            "or postgresql://user@host/db",
        )
    checked = sql_url(url, "state store", where, base)
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if dialect_for(parsed.get_backend_name().lower()).file_based and (
        (parsed.database or "").startswith("file:") or "mode" in parsed.query
    ):
        # a URI filename was taken for a path beside the map (a new, empty journal)
        # and escapes the run lease's lock file; mode=ro cannot hold a journal
        raise ConfigError(
            "state store: a SQLite URI filename (file:..., ?mode=...) cannot hold the journal",
            where=where,
            hint="name the file itself, writable: sqlite:///path/to/state.db",
        )
    return checked


def _place(store: Store) -> tuple[str, ...]:
    """What makes two store names one place, as far as the URLs alone can tell."""
    from sqlalchemy.engine import make_url

    if store.kind == "objects":
        if url_scheme(store.url) == "s3":
            bucket, _, prefix = store.url.partition("://")[2].partition("/")
            endpoint = str(store.options.get("endpoint_url") or "")
            return ("s3", endpoint, bucket, prefix.strip("/"))
        path = store.url[len("file://") :] if store.url.startswith("file://") else store.url[5:]
        return ("file", str(resolved(Path(path), store.name, store.name)))
    url = make_url(store.url)
    dialect = dialect_for(url.get_backend_name().lower())
    if dialect.file_based:
        return (dialect.family, str(resolved(Path(url.database or ""), store.name, store.name)))
    family = dialect.family
    port = url.port or dialect.default_port
    host = str(url.host or url.query.get("host") or "localhost").lower()
    return (family, host, str(port), url.database or "")


def check_places(stores: Mapping[str, Store], loc: Located) -> None:
    """Two names for one database, folder or bucket prefix are refused.

    A move between them would copy each record onto itself, then delete the
    source: the only copy.  (fleet checks server identities when connected;
    this catches what the URLs already show.)
    """
    seen: dict[tuple[str, ...], str] = {}
    for store in stores.values():
        place = _place(store)
        first = seen.setdefault(place, store.name)
        if first != store.name:
            raise ConfigError(
                f"store {store.name} is the same place as store {first} "
                f"(line {loc.line(('stores', first))}): {store.display_url}",
                where=loc.at("stores", store.name, "url"),
                hint="give each database, folder or bucket prefix one name: domicile would "
                "copy records onto themselves, then delete them",
            )


# --------------------------------------------------------------------------
# One record, one dataset: no table or object key may be claimed twice.


def reach_of(
    stores: Mapping[str, Store], jurisdictions: Mapping[str, Jurisdiction]
) -> Callable[[Dataset], set[str]]:
    """The stores a dataset can live in, as fleet resolves them.

    ``stores:`` narrows the stores where a dataset is looked for, but records
    moved home live there too: every home store of the dataset's kind counts.
    """
    homes = {h for j in jurisdictions.values() for h in j.home}

    def reach(ds: Dataset) -> set[str]:
        kind = "sql" if ds.is_sql else "objects"
        if ds.stores is None:
            return {n for n, s in stores.items() if s.kind == kind}
        return set(ds.stores) | {h for h in homes if stores[h].kind == kind}

    return reach


def check_tables(
    datasets: Mapping[str, Dataset], reach: Callable[[Dataset], set[str]], loc: Located
) -> None:
    """Two datasets of one table that can meet in a store are refused.

    Each would move and delete the rows by its own owners: one copies a row
    home, the other moves it again, or deletes it as "already moved".
    Names compare case-insensitively, as SQLite and MySQL do.
    """
    claimed: dict[tuple[str, str], Dataset] = {}  # (table, store) -> first dataset
    for ds in datasets.values():
        if ds.table is None:
            continue
        for store in sorted(reach(ds)):
            first = claimed.setdefault((ds.table.casefold(), store), ds)
            if first is not ds:
                raise ConfigError(
                    f"table '{ds.table}' is also the table of dataset '{first.name}' "
                    f"(line {loc.line(('datasets', first.name, 'table'))}); "
                    f"both can live in store {store}",
                    where=loc.at("datasets", ds.name, "table"),
                    hint="declare one dataset per table (use owners: [...] for several owners)",
                )


class _Tok(NamedTuple):
    """One step of an object pattern: a literal character or a class, once or repeated."""

    char: str | None  # None: any character but '/' (or any at all if slash)
    slash: bool
    repeat: bool


def _tokens(pattern: str) -> list[_Tok]:
    """The pattern as blobs.owner_pattern reads it: {owner} [^/]+, ** .*, * [^/]*, ? [^/]."""
    out: list[_Tok] = []
    for part in re.split(r"(\{owner\}|\*\*|\*|\?)", pattern):
        if part == "{owner}":
            out += [_Tok(None, False, False), _Tok(None, False, True)]
        elif part in ("**", "*", "?"):
            out.append(_Tok(None, part == "**", part != "?"))
        else:
            out += [_Tok(c, False, False) for c in part]
    return out


def _meet(a: _Tok, b: _Tok) -> str | None:
    """A character both steps accept, if any."""
    if a.char is not None and b.char is not None:
        return a.char if a.char == b.char else None
    lit, cls = (a, b) if a.char is not None else (b, a)
    if lit.char is None:
        return "x"  # two classes: both accept a letter
    return lit.char if lit.char != "/" or cls.slash else None


def _common_key(a: list[_Tok], b: list[_Tok], budget: list[int]) -> str | None:
    """A key both patterns match, or None: a breadth-first walk of their product."""
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {(0, 0): None}
    queue = deque([(0, 0)])
    while queue:
        budget[0] -= 1
        if budget[0] < 0:
            raise OverflowError
        i, j = state = queue.popleft()
        if i == len(a) and j == len(b):
            key = ""
            step = parent[state]
            while step is not None:
                state, char = step
                key = char + key
                step = parent[state]
            return key
        moves: list[tuple[tuple[int, int], str]] = []
        if i < len(a) and a[i].repeat:
            moves.append(((i + 1, j), ""))
        if j < len(b) and b[j].repeat:
            moves.append(((i, j + 1), ""))
        if i < len(a) and j < len(b) and (c := _meet(a[i], b[j])) is not None:
            moves.append(((i if a[i].repeat else i + 1, j if b[j].repeat else j + 1), c))
        for nxt, char in moves:
            if nxt not in parent:
                parent[nxt] = (state, char)
                queue.append(nxt)
    return None


def check_objects(
    datasets: Mapping[str, Dataset], reach: Callable[[Dataset], set[str]], loc: Located
) -> None:
    """Two object datasets whose patterns can match one key in one store are refused.

    The key's owner would be read twice, and the object moved (or deleted) by
    whichever dataset runs second.  The check is exact for the pattern language
    of :func:`domicile.blobs.owner_pattern`, within :data:`OVERLAP_BUDGET` steps.
    """
    items = [(ds, _tokens(ds.objects), reach(ds)) for ds in datasets.values() if ds.objects]
    budget = [OVERLAP_BUDGET]
    try:
        for n, (ds, tokens, where) in enumerate(items):
            for first, first_tokens, first_where in items[:n]:
                budget[0] -= 1
                shared = where & first_where
                key = _common_key(first_tokens, tokens, budget) if shared else None
                if key is not None:
                    same = "is also" if ds.objects == first.objects else "overlaps"
                    raise ConfigError(
                        f"object pattern '{ds.objects}' {same} the pattern of dataset "
                        f"'{first.name}' (line {loc.line(('datasets', first.name, 'objects'))}): "
                        f"both match key '{key}' in store {min(shared)}",
                        where=loc.at("datasets", ds.name, "objects"),
                        hint="declare one dataset per set of objects (patterns must not overlap)",
                    )
    except OverflowError:
        raise ConfigError(
            "too many or too complex object patterns to prove that no two overlap",
            where=loc.at("datasets"),
            hint="use fewer object datasets, with fewer wildcards",
        ) from None


SQL_OPTIONS = {  # a SQL store's options: name -> (type, what it bounds)
    "lock_timeout_seconds": (int, "how long a statement waits for a row lock"),
    "statement_timeout_seconds": (int, "how long one statement may run"),
    "read_timeout_seconds": (float, "how long the client waits for the server's answer"),
}


def sql_options(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """A SQL store's ``options``, checked: known names, positive numbers."""
    checked = dict(options)
    for key, value in options.items():
        if key not in SQL_OPTIONS:
            raise ConfigError(
                f"store {name}: unknown option '{key}'",
                where=where,
                hint="a SQL store's options are: " + ", ".join(sorted(SQL_OPTIONS)),
            )
        kind, what = SQL_OPTIONS[key]
        if isinstance(value, str):  # a ${VAR} expands to text
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or not 0 < value < 10**7:
            raise ConfigError(
                f"store {name}: option {key} must be a positive number of seconds, got {value!r}",
                where=where,
                hint=f"it bounds {what}, e.g. {key}: 30",
            )
        checked[key] = kind(value)
    return checked
