"""The journal's tables and records, its MAC, and how state-store failures read.

:mod:`domicile.run.journal` is the only writer of these tables; this module
holds what it writes: the schema (versioned, see :data:`SCHEMA_VERSION`), the
frozen records it returns, and :func:`batch_mac`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa

from domicile.errors import AuditIntegrityError, ConfigError, DomicileError, StateStoreError

STATES = ("copying", "copied", "verified", "deleting", "done", "failed")
"""A batch is journalled straight into ``copying``, with its keys and digests."""
ALLOWED: dict[str, frozenset[str]] = {
    "copying": frozenset({"copied", "failed"}),
    "copied": frozenset({"verified", "failed"}),
    "verified": frozenset({"deleting"}),
    "deleting": frozenset({"done", "failed"}),
    "failed": frozenset({"copying", "deleting"}),
    "done": frozenset(),
}

SCHEMA_VERSION = 4
"""1: the first release (no MACs, no run dependencies); 2: batch MACs, the
map's dependencies per run, the meta table; 3: a batch's rows packed into its
own record (:mod:`domicile.run.journal_pack`) instead of a row per record;
4: key-range parts of a (dataset, source) with their fencing tokens
(:mod:`domicile.run.parts`)."""

md = sa.MetaData()
meta = sa.Table(
    "domicile_meta",
    md,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
runs = sa.Table(
    "domicile_runs",
    md,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | incomplete | failed
    sa.Column("scope", sa.Text, nullable=False),  # JSON list of jurisdictions
    sa.Column("map_digest", sa.String(64), nullable=False),
    sa.Column("plan", sa.Text, nullable=False),  # JSON
    sa.Column("summary", sa.Text),  # JSON, written at the end
    # JSON: what of the map the run depends on (stores, homes, datasets, keys)
    sa.Column("depends", sa.Text),
)
batches = sa.Table(
    "domicile_batches",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), sa.ForeignKey("domicile_runs.id"), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("pass_no", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("lo", sa.Text),  # JSON key, exclusive; NULL = from the start
    sa.Column("hi", sa.Text, nullable=False),  # JSON key, inclusive
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64)),  # batch digest, set when copied
    sa.Column("counts", sa.Text),  # JSON: deleted, changed, vanished, deferred, ...
    sa.Column("error", sa.Text),
    sa.Column("failed_in", sa.String(10)),  # copy | delete: where a resume starts again
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mac", sa.String(64)),  # HMAC of the batch and its rows (see module doc)
    # schema 3: the batch's rows, packed (see domicile.run.journal_pack); NULL in
    # batches of schema 2, whose rows are in domicile_batch_rows
    sa.Column("row_keys", sa.Text),
    sa.Column("row_digests", sa.LargeBinary),
    sa.Column("row_targets", sa.Text),
    sa.Column("row_homes", sa.LargeBinary),
    sa.Column("row_notes", sa.Text),
    sa.Index("ix_domicile_batches_run", "run_id", "dataset", "source", "pass_no", "seq"),
)
META = [c for c in batches.c if not c.name.startswith("row_")]
"""A batch's columns without its packed rows: what listing and state reads need."""

# schema 4: one large table's key space split into parts that workers move in
# parallel; a part's batches are numbered from part_no * PART_SEQ
parts = sa.Table(
    "domicile_parts",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), sa.ForeignKey("domicile_runs.id"), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("pass_no", sa.Integer, nullable=False),
    sa.Column("part_no", sa.Integer, nullable=False),
    sa.Column("lo", sa.Text),  # JSON key, exclusive; NULL = from the start
    sa.Column("hi", sa.Text),  # JSON key, inclusive; NULL = to the end
    # the fencing token: raised by every attempt that claims the part; a journal
    # write of an attempt whose token is no longer the part's is refused
    sa.Column("token", sa.Integer, nullable=False, default=0),
    sa.Column("holder", sa.String(200)),  # who claimed it last (a worker's address)
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_domicile_parts_run", "run_id", "dataset", "source", "pass_no", "part_no"),
)
# schema 2 kept a row here per record; read for batches of that schema only
batch_rows = sa.Table(
    "domicile_batch_rows",
    md,
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("domicile_batches.id"), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),  # canonical JSON of the key values
    sa.Column("digest", sa.String(64), nullable=False),  # content digest as copied
    sa.Column("targets", sa.Text, nullable=False),  # JSON list of home stores
    sa.Column("dataset", sa.String(200), nullable=False),
    # NULL: moving; dropped: changed or gone before the copy; deferred: parent not yet
    # at home; kept-home: conflict resolved for home; changed / vanished: seen at delete
    sa.Column("status", sa.String(20)),
    # rows whose blob URL is rewritten at home digest differently there
    sa.Column("home_digest", sa.String(64)),
    # JSON: the row's object (store, key, version, sha256, home url) when it has one
    sa.Column("blob", sa.Text),
    sa.Index("ix_domicile_batch_rows_key", "dataset", "key"),
)


def prepare_schema(engine: sa.Engine) -> None:
    """Create the journal's tables, or bring an older schema up to :data:`SCHEMA_VERSION`."""
    insp = sa.inspect(engine)
    had_runs = insp.has_table(runs.name)
    had_meta = insp.has_table(meta.name)
    version = 1 if had_runs else SCHEMA_VERSION
    if had_meta:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(meta.c.value).where(meta.c.name == "schema_version")
            ).first()
        if row is not None:
            version = int(row[0])
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the state store was written by a newer domicile (journal schema {version}; "
            f"this one knows up to {SCHEMA_VERSION})",
            where=f"state store {engine.url.render_as_string(hide_password=True)}",
            hint="upgrade domicile on this machine, or point state: at another store",
        )
    md.create_all(engine)
    add_columns(engine, version)
    if version != SCHEMA_VERSION or not had_meta:
        with engine.begin() as conn:
            conn.execute(meta.delete().where(meta.c.name == "schema_version"))
            conn.execute(meta.insert().values(name="schema_version", value=str(SCHEMA_VERSION)))


def add_columns(engine: sa.Engine, version: int) -> None:
    """Bring the tables of journal schema *version* up to :data:`SCHEMA_VERSION`'s columns."""
    if version < 2:
        # 1 -> 2: two nullable columns.  Batches of version 1 carry no MAC:
        # they can be read, never acted on (checked_batch refuses them).
        with engine.begin() as conn:
            cols = {c["name"] for c in sa.inspect(conn).get_columns(runs.name)}
            if "depends" not in cols:
                conn.execute(sa.text("ALTER TABLE domicile_runs ADD COLUMN depends TEXT"))
            cols = {c["name"] for c in sa.inspect(conn).get_columns(batches.name)}
            if "mac" not in cols:
                conn.execute(sa.text("ALTER TABLE domicile_batches ADD COLUMN mac VARCHAR(64)"))
    if version < 3:
        # 2 -> 3: the packed rows, nullable.  Batches of schema 2 keep their
        # rows in domicile_batch_rows (read as before) until a write packs them.
        with engine.begin() as conn:
            cols = {c["name"] for c in sa.inspect(conn).get_columns(batches.name)}
            blob = sa.LargeBinary().compile(dialect=conn.dialect)
            for name, kind in (
                ("row_keys", "TEXT"),
                ("row_digests", blob),
                ("row_targets", "TEXT"),
                ("row_homes", blob),
                ("row_notes", "TEXT"),
            ):
                if name not in cols:
                    add = f"ALTER TABLE domicile_batches ADD COLUMN {name} {kind}"
                    conn.execute(sa.text(add))


def key_text(key: Sequence[Any]) -> str:
    """Canonical JSON for a key tuple (stable, compact)."""
    return json.dumps(list(key), default=str, separators=(",", ":"), ensure_ascii=False)


def key_values(text: str | None) -> tuple[Any, ...] | None:
    """The key tuple back from :func:`key_text`."""
    return None if text is None else tuple(json.loads(text))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RunRecord:
    """One run as the journal holds it."""

    id: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    scope: tuple[str, ...]
    map_digest: str
    plan: dict[str, Any]
    summary: dict[str, Any] | None
    depends: dict[str, Any] | None = None


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the journal holds it."""

    id: int
    run_id: str
    dataset: str
    source: str
    pass_no: int
    seq: int
    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...]
    state: str
    rows: int
    digest: str | None
    counts: dict[str, int]
    error: str | None
    failed_in: str | None


class BatchRow(NamedTuple):
    """A row of a batch: its key, its content digest as copied, and its homes."""

    key: tuple[Any, ...]
    digest: str
    targets: tuple[str, ...]
    status: str | None = None
    home_digest: str | None = None
    blob: dict[str, Any] | None = None

    @property
    def digest_at_home(self) -> str:
        """The digest the row must have at home (differs when a blob URL was rewritten)."""
        return self.home_digest or self.digest


class IllegalTransition(DomicileError):
    """A batch was asked to skip a step of the protocol (a bug, never user input)."""


class JournalTampered(AuditIntegrityError):
    """A journal record does not carry a valid MAC: it was edited outside domicile."""


BATCH_FIELDS = (
    "run_id", "id", "dataset", "source", "pass_no", "seq", "lo", "hi",
    "state", "rows", "digest", "counts", "error", "failed_in",
)  # fmt: skip
ROW_FIELDS = ("key", "digest", "targets", "status", "home_digest", "blob")


def rows_fingerprint(rows: Iterable[Any]) -> bytes:
    """SHA-256 over a batch's rows, each its stored fields joined (order-independent).

    The fields are texts (JSON, hex, a status word) or None; NUL never occurs
    in them (JSON escapes it), so NUL-joined fields with SOH for None are
    unambiguous, and far cheaper than encoding each row as JSON.
    """
    lines = sorted(
        "\x00".join("\x01" if v is None else str(v) for v in (getattr(r, f) for f in ROW_FIELDS))
        for r in rows
    )
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.digest()


def batch_mac(key: bytes, batch: Any, rows_fp: bytes) -> str:
    """HMAC-SHA-256 over a batch's stored fields and its rows' fingerprint.

    Computed over the texts exactly as stored (JSON keys, counts), so that a
    read-back recomputes the same bytes on every state-store engine.
    """
    body = json.dumps([getattr(batch, f) for f in BATCH_FIELDS], default=str)
    h = hmac.new(key, b"domicile.journal.v2\n" + body.encode() + b"\n", hashlib.sha256)
    h.update(rows_fp)
    return h.hexdigest()


def check_mac(key: bytes, row: Any, rows_fp: bytes) -> None:
    """Raise :class:`JournalTampered` unless the batch *row*'s MAC matches its fields
    and its rows' fingerprint *rows_fp*."""
    if row.mac is None:
        raise JournalTampered(
            f"batch {row.id} of run {row.run_id} ({row.dataset} from {row.source}) carries "
            "no MAC: it was journalled by an older domicile or written outside domicile",
            where="the journal",
            hint=f"nothing was changed; abandon the run (domicile run --abandon "
            f"{row.run_id}) and start a new one",
        )
    if not hmac.compare_digest(row.mac, batch_mac(key, row, rows_fp)):
        raise JournalTampered(
            f"batch {row.id} of run {row.run_id} ({row.dataset} from {row.source}, state "
            f"{row.state}) does not match its MAC: the journal was edited outside domicile",
            where="the journal",
            hint="nothing was deleted; find who changed the state store, compare it with "
            "the audit log (domicile audit verify), then abandon the run",
        )


@dataclass(frozen=True)
class Copy:
    """One journalled copy of a key to a home: which batch and source, and what content."""

    batch_id: int
    source: str
    digest: str
    home_digest: str | None

    @property
    def digest_at_home(self) -> str:
        """The digest the copy had at home."""
        return self.home_digest or self.digest


@contextmanager
def state_errors(engine: sa.Engine, doing: str) -> Iterator[None]:
    """Turn a state-store failure into a clear, resumable error (never a traceback)."""
    try:
        yield
    except DomicileError:
        raise
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        text = detail[0] if detail else type(exc).__name__
        url = engine.url.render_as_string(hide_password=True)
        lowered = text.lower()
        if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
            hint = "the state store is read-only: make it writable, then resume"
        elif "full" in lowered or "no space" in lowered or "disk i/o" in lowered:
            # SQLite says "disk I/O error" when a write fails short of ENOSPC (EFBIG)
            hint = "the state store's disk is full or failing: free space, then resume"
        elif "locked" in lowered:
            hint = "another process holds the state store's lock: wait, then try again"
        else:
            hint = "check that the state store is reachable and writable, then resume"
        raise StateStoreError(f"{doing}: {text}", where=f"state store {url}", hint=hint) from exc


@contextmanager
def state_connection(engine: sa.Engine, doing: str, *, begin: bool) -> Iterator[sa.Connection]:
    with state_errors(engine, doing):
        if begin:
            with engine.begin() as conn:
                yield conn
        else:
            with engine.connect() as conn:
                yield conn


F = TypeVar("F", bound=Callable[..., Any])


def parsed(what: str) -> Callable[[F], F]:
    """Decorate a reader of journal records: a field that does not parse (garbled
    JSON, a wrong length, a wrong type) is a damaged journal, exit 5, never a traceback."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                record = next((a for a in args[1:] if hasattr(a, "id")), None)
                which = f" {record.id}" if record is not None else ""
                raise JournalTampered(
                    f"the journal is damaged: {what}{which} does not parse "
                    f"({type(exc).__name__}: {exc})",
                    hint="the state store was edited or corrupted outside domicile: restore it "
                    "from a backup (nothing was changed; domicile will not act on it)",
                ) from exc

        return inner  # type: ignore[return-value]

    return wrap
