"""Store identity: two store names that are one physical place, and stores inside another.

Two names for one database (``./sg.db`` and ``sg.db``, a symbolic link,
``localhost`` and ``127.0.0.1``, a DNS alias) make every row look "already
home", and compare-and-delete then removes the only copy.  So every name is
resolved to what it physically is: PostgreSQL system identifier + database
OID, MySQL ``@@server_uuid`` + ``DATABASE()``, SQLite or folder device + inode.
MariaDB has no server UUID, and an S3 endpoint + bucket + prefix is only a
*name* (two host names reach one server): there a **marker** decides.

``run`` writes through each name a marker under the name's token (a digest of
the name) with a fresh random nonce, then reads markers back through every
other name: a nonce written through A and read through B means one place.
Nonces, not tokens, decide, so markers of earlier runs (a store renamed,
re-pointed, or copied with its marker table) make no false clash.  Markers
are written for every store, a second line of defence behind the engine's
word (two NFS mounts of one export have different device numbers).  ``check``
writes nothing: it compares the markers that exist and warns where one is
missing.  A store inside another (a deeper prefix of one bucket, a folder in a
folder) is refused too: the outer listing would count, and could delete, the
inner store's objects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import sqlalchemy as sa

from domicile.connectors.objects import ObjectStore
from domicile.connectors.objects.store import DOMICILE_PREFIX
from domicile.connectors.sql import SqlStore
from domicile.errors import ConfigError, ConnectorError, DomicileError, PermanentConnectorError

MARKER_TABLE = "domicile_store_marker"
"""The table of markers in SQL stores (in the connection's default schema)."""

MARKER_PREFIX = DOMICILE_PREFIX
"""Key prefix of marker objects in object stores: not user data, listings skip it."""

_MARKER_OBJECT = MARKER_PREFIX + "marker-"
_MAX_MARKER_BYTES = 64 << 10

_markers = sa.Table(
    MARKER_TABLE,
    sa.MetaData(),
    sa.Column("store_token", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("store_name", sa.String(255), nullable=False),  # for people reading the table
    sa.Column("written_at", sa.DateTime(), nullable=False),  # naive UTC: every engine keeps it
)

SAME_PLACE_HINT = (
    "two names for one database: remove one, or point it at a distinct database; "
    "nothing was changed"
)
CONTAINS_HINT = (
    "one store lies inside another: give each store its own folder or prefix, side by "
    "side; nothing was changed"
)


@dataclass(frozen=True)
class Identity:
    """What one store name physically is.

    ``identity`` is the engine's own word (None where it has none: MariaDB,
    S3, an in-memory SQLite); ``method`` says how it was obtained, and
    ``location`` is the resolved place for people (a real path, an S3 name).
    """

    store: str
    kind: str  # sqlite, memory, postgresql, mysql, mariadb, folder, s3, or the dialect
    identity: str | None
    method: str
    location: str = ""


@dataclass(frozen=True)
class Sighting:
    """A marker read through a store name: whose (token), which write (nonce), and where
    (``inside``: "" at the store's root, else the folder of a store nested in this one)."""

    token: str
    nonce: str
    inside: str = ""


@dataclass(frozen=True)
class Probe:
    """Everything read through one store name: the input of :func:`compare`.

    ``place`` is what nesting is judged by (the engine identity, or an S3
    name ``s3:endpoint/bucket/prefix``) and ``ancestors`` the places above it
    (the folders above a folder, the shorter prefixes of an S3 prefix).
    """

    identity: Identity
    token: str
    own: str | None = None  # nonce of this name's own marker: written now (fresh) or found (check)
    fresh: bool = False
    seen: tuple[Sighting, ...] = ()
    markable: bool = True  # False where no marker can exist (an in-memory database)
    place: str | None = None
    ancestors: frozenset[str] = frozenset()


Reason = Literal["identity", "marker", "contains"]


@dataclass(frozen=True)
class Clash:
    """Two store names that are one place (or, for ``contains``, *first* contains *second*)."""

    first: str
    second: str
    reason: Reason
    detail: str


def marker_token(store_name: str) -> str:
    """The token a store name writes its marker under: 64 hex digits, stable across runs."""
    return hashlib.sha256(b"domicile store marker\0" + store_name.encode()).hexdigest()


def _by_place(a: Probe, b: Probe) -> Clash | None:
    """The clash the engines' identities and the locations show, if any."""
    where_a, where_b = a.identity.location, b.identity.location
    if a.place is not None and a.place == b.place:
        how = a.identity.method if a.identity.identity else "one name"
        return Clash(a.identity.store, b.identity.store, "identity", f"both are {a.place} ({how})")
    if a.place is not None and a.place in b.ancestors:
        return Clash(a.identity.store, b.identity.store, "contains", f"{where_b} is in {where_a}")
    if b.place is not None and b.place in a.ancestors:
        return Clash(b.identity.store, a.identity.store, "contains", f"{where_a} is in {where_b}")
    return None


def compare(probes: Sequence[Probe]) -> tuple[list[Clash], list[str]]:
    """The clashes and warnings among *probes*; pure, the whole decision rule.

    A pair clashes when both have one place (engine identity or S3 name), when
    one's place is above the other's, or when one name reads the nonce another
    name wrote.  A nonce merely *found* (check mode) where the engines say two
    distinct places is only a warning: a copied database carries its marker
    table along, and run will write fresh ones.  One clash per pair.
    """
    clashes: dict[frozenset[str], Clash] = {}
    warnings: list[str] = []
    for i, a in enumerate(probes):
        for b in probes[i + 1 :]:
            if clash := _by_place(a, b):
                clashes.setdefault(frozenset((clash.first, clash.second)), clash)
    by_token = {p.token: p for p in probes}
    for via in probes:
        for seen in via.seen:
            writer = by_token.get(seen.token)
            if writer is None or writer is via or seen.nonce != writer.own:
                continue  # another map's marker, or a stale one: no name of this run wrote it
            name_a, name_b = writer.identity.store, via.identity.store
            ida, idb = writer.identity.identity, via.identity.identity
            if seen.inside:
                detail = f"{name_a}'s marker is read through {name_b} in {seen.inside}/"
                clash = Clash(name_b, name_a, "contains", detail)
            elif not writer.fresh and ida is not None and idb is not None and ida != idb:
                warnings.append(
                    f"{name_b} holds the identity marker of {name_a}, but the engines say they "
                    f"are distinct ({idb} vs {ida}): a copied database? run will decide"
                )
                continue
            else:
                when = "written" if writer.fresh else "found"
                detail = f"the marker {when} through {name_a} is read through {name_b}"
                clash = Clash(name_a, name_b, "marker", detail)
            clashes.setdefault(frozenset((name_a, name_b)), clash)
    for p in probes:
        own_seen = any(s.token == p.token and s.nonce == p.own and not s.inside for s in p.seen)
        if p.markable and p.fresh and not own_seen:
            warnings.append(
                f"{p.identity.store}: the identity marker just written was not read back "
                "(a load balancer over several databases or buckets?)"
            )
        elif p.markable and not p.fresh and p.own is None and p.identity.identity is None:
            warnings.append(
                f"{p.identity.store}: no identity marker yet, so whether another store name "
                "reaches the same place is unknown; run will write one"
            )
    return list(clashes.values()), warnings


@dataclass(frozen=True)
class IdentityReport:
    """The identities read, the clashes found and the warnings of one check."""

    identities: tuple[Identity, ...]
    clashes: tuple[Clash, ...]
    warnings: tuple[str, ...]
    displays: Mapping[str, str] = field(default_factory=dict)  # store name -> masked URL

    def describe(self, clash: Clash) -> str:
        """One line naming both stores, their displayed URLs, and the evidence."""
        first = f"{clash.first} ({self.displays.get(clash.first, '?')})"
        second = f"{clash.second} ({self.displays.get(clash.second, '?')})"
        if clash.reason == "contains":
            return f"store {first} contains store {second}: {clash.detail}"
        return f"stores {first} and {second} are one place: {clash.detail}"

    def raise_for_clashes(self) -> None:
        """Raise ConfigError (exit code 2) naming every clash; return if there is none."""
        if not self.clashes:
            return
        hints = [SAME_PLACE_HINT] if any(c.reason != "contains" for c in self.clashes) else []
        if any(c.reason == "contains" for c in self.clashes):
            hints.append(CONTAINS_HINT)
        lines = [self.describe(c) for c in self.clashes]
        raise ConfigError("; ".join(lines), hint="; ".join(hints))


def read_identities(
    sql_stores: Iterable[SqlStore],
    object_stores: Iterable[ObjectStore],
    *,
    write_markers: bool,
) -> IdentityReport:
    """Read every store's identity (and markers) and compare them all.

    With *write_markers* (run), each name first writes its marker with a
    fresh nonce and any store that cannot be read raises; without (check),
    nothing is written and an unreadable store becomes a warning (the check
    of reachability reports it).
    """
    probes: list[Probe] = []
    warnings: list[str] = []
    displays: dict[str, str] = {}
    readers: dict[str, ObjectStore] = {}
    for sql in sql_stores:
        displays[sql.name] = sql.store.display_url
        with _unless_checking(write_markers, sql.name, warnings):
            probes.append(_probe_sql(sql, write_markers, warnings))
    for objects in object_stores:
        displays[objects.name] = _display(objects)
        with _unless_checking(write_markers, objects.name, warnings):
            probes.append(_probe_objects(objects, write_markers))
            readers[objects.name] = objects
    probes = [_look_inside(p, probes, readers, write_markers, warnings) for p in probes]
    clashes, more = compare(probes)
    return IdentityReport(
        tuple(p.identity for p in probes), tuple(clashes), tuple(warnings + more), displays
    )


@contextmanager
def _unless_checking(strict: bool, name: str, warnings: list[str]) -> Iterator[None]:
    """Turn a store's DomicileError into a warning in check mode; let it raise in run mode."""
    try:
        yield
    except DomicileError as exc:
        if strict:
            raise
        warnings.append(f"{name}: identity not read: {exc.message}")


# -- SQL stores -----------------------------------------------------------------------


def _probe_sql(sql: SqlStore, write: bool, warnings: list[str]) -> Probe:
    identity = _engine_identity(sql)
    token = marker_token(sql.name)
    if identity.kind == "memory":
        return Probe(identity, token, None, markable=False)
    nonce = secrets.token_hex(16) if write else None
    if nonce is not None:
        try:
            _write_sql_marker(sql, token, nonce)
        except ConnectorError as exc:
            if identity.identity is None:  # the marker is the only evidence: cannot go on
                raise PermanentConnectorError(
                    f"cannot write the identity marker: {exc.message}",
                    where=f"store {sql.name} ({sql.store.display_url})",
                    hint=f"let domicile create and write table {MARKER_TABLE} here: without it "
                    "two names for this database cannot be told apart",
                ) from exc
            warnings.append(f"{sql.name}: identity marker not written ({exc.message})")
            nonce = None
    seen = _read_sql_markers(sql)
    own = nonce or next((s.nonce for s in seen if s.token == token), None)
    return Probe(identity, token, own, nonce is not None, seen, place=identity.identity)


# dialect -> (how, the query for the database in the server, the query for the server)
_SERVER_QUERIES = {
    "postgresql": (
        "system identifier and database OID",
        "SELECT oid FROM pg_database WHERE datname = current_database()",
        "SELECT system_identifier FROM pg_control_system()",
    ),
    "mysql": ("@@server_uuid and DATABASE()", "SELECT DATABASE()", "SELECT @@server_uuid"),
}
# The server will not say: not allowed, no such function (PostgreSQL look-alikes),
# unknown system variable (MariaDB has no server UUID).  The marker decides there.
_NO_IDENTITY = {"42501", "42883", 1193}


def _engine_identity(sql: SqlStore) -> Identity:
    name, dialect = sql.name, sql.dialect
    if dialect == "sqlite":
        db = sql.url.database or ""
        if db.startswith("file:"):  # a URI filename (?uri=true)
            db = urlsplit(db).path
        if not db or db == ":memory:" or str(sql.url.query.get("mode")) == "memory":
            return Identity(name, "memory", None, "in-memory database: never shared", ":memory:")
        path = os.path.realpath(db)
        return Identity(name, "sqlite", _inode("sqlite", path, name), "device and inode", path)
    family = "mysql" if dialect == "mariadb" else dialect  # one client speaks to both
    if family not in _SERVER_QUERIES:
        return Identity(name, dialect, None, f"marker (no engine identity known for {dialect})")
    method, scope, server = _SERVER_QUERIES[family]
    with sql.connect("reading the database identity") as conn:
        inside = conn.execute(sa.text(scope)).scalar()
        try:
            place = conn.execute(sa.text(server)).scalar()
        except sa.exc.DBAPIError as exc:
            # psycopg says sqlstate; PyMySQL has one too (HY000), the errno is args[0]
            codes = {getattr(exc.orig, "sqlstate", None), *getattr(exc.orig, "args", ())[:1]}
            if not (code := next(iter(codes & _NO_IDENTITY), None)):
                raise
            kind = "mariadb" if family == "mysql" else family
            return Identity(name, kind, None, f"marker ({server} refused: {code})")
    return Identity(name, family, f"{family}:{place}:{inside}", method)


def _write_sql_marker(sql: SqlStore, token: str, nonce: str) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with sql.begin("writing the identity marker") as conn:
        _markers.create(conn, checkfirst=True)
        conn.execute(sa.delete(_markers).where(_markers.c.store_token == token))
        conn.execute(
            sa.insert(_markers).values(
                store_token=token, nonce=nonce, store_name=sql.name[:255], written_at=now
            )
        )


def _read_sql_markers(sql: SqlStore) -> tuple[Sighting, ...]:
    with sql.connect("reading identity markers") as conn:
        if not sa.inspect(conn).has_table(MARKER_TABLE):  # check mode must not create it
            return ()
        rows = conn.execute(sa.select(_markers.c.store_token, _markers.c.nonce)).all()
    return tuple(Sighting(str(token), str(nonce)) for token, nonce in rows)


# -- object stores --------------------------------------------------------------------


def _root_url(objects: ObjectStore) -> str:
    """The store's root URL, from the public url_for (``…/x`` minus ``/x``)."""
    return objects.url_for("x")[: -len("/x")]


def _endpoint(url: str | None) -> str:
    """An S3 endpoint as one spelling: lower-case scheme and host, explicit port."""
    if not url:
        return "aws"  # the default endpoint: bucket names are global there
    parts = urlsplit(url.strip())
    scheme = (parts.scheme or "https").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    host = (parts.hostname or "").lower().rstrip(".")
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _display(objects: ObjectStore) -> str:
    if objects.scheme != "s3":
        return _root_url(objects)
    endpoint = re.sub(r"//[^/@]*@", "//", objects.endpoint_url or "the AWS endpoint")
    return f"{_root_url(objects)} at {endpoint}"


def _marker_key(token: str) -> str:
    return _MARKER_OBJECT + token


def _probe_objects(objects: ObjectStore, write: bool) -> Probe:
    token, root = marker_token(objects.name), _root_url(objects)
    nonce = secrets.token_hex(16) if write else None
    if nonce is not None:  # first, so that a run may create a new home folder
        now = dt.datetime.now(dt.UTC).isoformat()
        body = {"store": objects.name, "token": token, "nonce": nonce, "written_at": now}
        objects.put_stream(_marker_key(token), io.BytesIO(json.dumps(body).encode()))
    if objects.scheme == "file":
        identity, ancestors = _folder_identity(objects.name, root[len("file://") :])
        place = identity.identity
    else:
        # The name: one spelling of endpoint, bucket and prefix; its shorter
        # prefixes are the places above it.  Another host name for the
        # endpoint is caught by the markers (and by _look_inside).
        parts = [_endpoint(objects.endpoint_url), *root[len("s3://") :].split("/")]
        names = ["s3:" + "/".join(parts[:n]) for n in range(2, len(parts) + 1)]
        place, ancestors = names[-1], frozenset(names[:-1])
        identity = Identity(objects.name, "s3", None, "marker (an S3 name is not a place)", place)
    seen = tuple(_read_object_markers(objects))
    own = nonce or next((s.nonce for s in seen if s.token == token), None)
    return Probe(identity, token, own, nonce is not None, seen, True, place, ancestors)


def _inode(kind: str, path: str, store: str) -> str:
    """``kind:device:inode`` of *path*: one file or folder, however it is spelled."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        hint = "create it or fix the path in the store url"
        raise PermanentConnectorError(f"{path} does not exist", where=store, hint=hint) from None
    return f"{kind}:{found.st_dev}:{found.st_ino}"


def _folder_identity(name: str, folder: str) -> tuple[Identity, frozenset[str]]:
    real = os.path.realpath(folder or "/")
    ident = _inode("folder", real, name)
    # the folders above, by device + inode: nesting shows through any spelling or link
    ancestors = frozenset(_inode("folder", str(up), name) for up in Path(real).parents)
    return Identity(name, "folder", ident, "device and inode", real), ancestors


def _read_object_markers(objects: ObjectStore) -> Iterator[Sighting]:
    for info in objects.list(_MARKER_OBJECT):
        nonce = _marker_nonce(objects, info.key)
        if nonce is not None:
            yield Sighting(info.key[len(_MARKER_OBJECT) :], nonce)


def _marker_nonce(objects: ObjectStore, key: str) -> str | None:
    """The nonce in the marker object *key*; None if it is missing or not a marker."""
    if not objects.exists(key):
        return None
    with objects.open_read(key) as reader:
        data = reader.read(_MAX_MARKER_BYTES)
    try:
        nonce = json.loads(data).get("nonce")
    except (ValueError, AttributeError):
        return None
    return nonce if isinstance(nonce, str) else None


def _look_inside(
    outer: Probe,
    probes: Sequence[Probe],
    readers: Mapping[str, ObjectStore],
    strict: bool,
    warnings: list[str],
) -> Probe:
    """Add the markers of the S3 stores whose prefix lies below *outer*'s in one bucket.

    One bucket reached through two host names, one with a deeper prefix: the
    names do not nest, so look for the inner store's marker at its relative
    place through the outer name (one HEAD per such pair, no listing).
    """
    reader = readers.get(outer.identity.store)
    if reader is None or reader.scheme != "s3":
        return outer
    root, found = _root_url(reader) + "/", list[Sighting]()
    for inner in probes:
        other = readers.get(inner.identity.store)
        if other is None or other.scheme != "s3" or inner.own is None:
            continue
        inside = _root_url(other)[len(root) :] if _root_url(other).startswith(root) else ""
        with _unless_checking(strict, outer.identity.store, warnings):
            if inside and (nonce := _marker_nonce(reader, f"{inside}/{_marker_key(inner.token)}")):
                found.append(Sighting(inner.token, nonce, inside))
    return replace(outer, seen=outer.seen + tuple(found)) if found else outer
