"""Where a subject's data lives and goes, and reading its records at home.

- :func:`route` answers for a country (a sign-up not yet in the directory);
- :func:`subject_home` reads the subject's country from the directory (every
  store that holds it, in map order) and answers the same way;
- :func:`read_records` reads one dataset's records of a subject from the
  dataset's home store (every store holding the dataset, for a subject no
  rule restricts), by the dataset's owner columns or paths, in key order,
  one bounded page at a time.

Subject ids are checked against the directory's id column before any query:
an integer column takes only integers.  Every value reaches SQL as a bound
parameter.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa

from domicile.access.errors import BadRequest, NotFound
from domicile.countries import normalize_country
from domicile.errors import ConfigError
from domicile.fleet import Fleet, Location
from domicile.model import DataMap, Dataset, Jurisdiction, Subjects
from domicile.placement import home_store

Status = Literal["restricted", "unrestricted", "unresolved"]

SUBJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:+\-]{0,127}$"
"""What a subject id in a URL may look like (anything else is refused before any lookup)."""

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_OFFSET = 1_000_000
_INT = re.compile(r"^-?[0-9]{1,19}$")
_ID = re.compile(SUBJECT_ID_PATTERN)


@dataclass(frozen=True)
class HomeAnswer:
    """Where a subject's data may sit and goes: ``/home`` and ``/route``."""

    subject: str | None
    status: Status
    jurisdiction: str | None
    homes: dict[str, str] = field(default_factory=dict)
    countries: tuple[str, ...] = ()  # the jurisdiction's (for the policy, not the answer)

    def to_json(self) -> dict[str, Any]:
        """The answer's JSON: subject, status, jurisdiction, homes per dataset."""
        return {
            "subject": self.subject,
            "status": self.status,
            "jurisdiction": self.jurisdiction,
            "homes": dict(self.homes),
        }


def homes_of(m: DataMap, j: Jurisdiction) -> dict[str, str]:
    """The home store of every personal dataset for *j* (datasets it has no home kind for: none)."""
    out: dict[str, str] = {}
    for ds in m.datasets.values():
        if ds.reference:
            continue
        try:
            out[ds.name] = home_store(m, j, ds)
        except ConfigError:
            continue  # an object dataset where the jurisdiction's home has no object store
    return out


def answer_for(m: DataMap, country: str | None, subject: str | None = None) -> HomeAnswer:
    """The answer for a subject (or sign-up) of *country* (alpha-2; None: not mappable)."""
    if country is None:
        return HomeAnswer(subject, "unresolved", None)
    j = m.jurisdiction_of_country(country)
    if j is None:
        return HomeAnswer(subject, "unrestricted", None)
    return HomeAnswer(subject, "restricted", j.name, homes_of(m, j), tuple(sorted(j.countries)))


def route(m: DataMap, country: str) -> HomeAnswer:
    """The answer for a new subject of *country* (a code or a name; normalised)."""
    code = normalize_country(country) if len(country) <= 64 else None
    if code is None:
        raise BadRequest(f"unknown country {country[:64]!r}", hint="use an ISO 3166-1 code")
    return answer_for(m, code)


def _id_is_integer(fleet: Fleet) -> bool:
    try:
        return issubclass(fleet.subject_id_column().type.python_type, int)
    except NotImplementedError:  # SQLAlchemy's answer for a type with no Python type
        return False  # (an untyped SQLite column): ids are then matched as given


def parse_subject_id(fleet: Fleet, text: str) -> Any:
    """The subject id as the directory's id column holds it; BadRequest when malformed."""
    if not _ID.match(text):
        raise BadRequest(
            "malformed subject id", hint="letters, digits and _ . @ : + -, at most 128 characters"
        )
    if _id_is_integer(fleet):
        if not _INT.match(text) or not -(2**63) <= int(text) < 2**63:
            raise BadRequest("malformed subject id: this directory's ids are integers")
        return int(text)
    return text


_SID = "_dm_sid"  # bind parameter names no column starts with
_LIMIT = "_dm_limit"
_OFFSET = "_dm_offset"


@lru_cache(maxsize=256)
def _directory_query(loc: Location, sub: Subjects) -> sa.Select[Any]:
    """The directory lookup of one store, built once (the id is a bound parameter)."""
    from domicile.directory_sql import directory_rows

    rows = directory_rows(loc.store, loc.table, sub)
    return (
        sa.select(rows.country)
        .select_from(rows.from_)
        .where(rows.id == sa.bindparam(_SID))
        .limit(1)
    )


def _directory_order(fleet: Fleet) -> list[Location]:
    # Homes first: after a move, that is where a protected subject's directory row is.
    homes = {h for j in fleet.map.jurisdictions.values() for h in j.home}
    locations = fleet.locations(fleet.map.subjects.dataset)
    return sorted(locations, key=lambda loc: loc.store.name not in homes)


def find_country(fleet: Fleet, sid: Any) -> tuple[bool, Any]:
    """(found, raw country) for subject *sid*, from the first directory store that has it."""
    sub = fleet.map.subjects
    for loc in _directory_order(fleet):
        with loc.store.connect("reading the subjects directory") as conn:
            row = conn.execute(_directory_query(loc, sub), {_SID: sid}).first()
        if row is not None:
            return True, row[0]
    return False, None


def subject_home(fleet: Fleet, text: str) -> tuple[Any, HomeAnswer]:
    """The parsed id and the answer for the subject; NotFound when no directory has it."""
    sid = parse_subject_id(fleet, text)
    found, raw = find_country(fleet, sid)
    if not found:
        raise NotFound("no such subject in the directory")
    return sid, answer_for(fleet.map, normalize_country(raw), str(sid))


def record_dataset(m: DataMap, name: str) -> Dataset:
    """A personal SQL dataset whose records the gateway can read; BadRequest otherwise."""
    ds = m.datasets.get(name)
    if ds is None:
        raise BadRequest(
            f"unknown dataset {name[:64]!r}", hint="datasets: " + ", ".join(m.datasets)
        )
    if ds.reference or not ds.is_sql:
        raise BadRequest(f"dataset {name!r} holds no subject records the gateway serves")
    return ds


def json_value(value: Any) -> Any:
    """A column value as JSON: decimals and times as text, bytes as base64."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class RecordsPage:
    """One page of a subject's records of one dataset."""

    dataset: str
    stores: tuple[str, ...]
    records: list[dict[str, Any]]
    limit: int
    offset: int
    next_offset: int | None


@lru_cache(maxsize=256)
def _records_queries(loc: Location, ds: Dataset) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The count and the page of a subject's records in one store, built once."""
    from domicile.scan import owner_expressions

    from_, exprs = owner_expressions(loc, ds)
    where = sa.or_(*(e == sa.bindparam(_SID) for e in exprs))
    count = sa.select(sa.func.count()).select_from(from_).where(where)
    page = (
        sa.select(*loc.table.c)
        .select_from(from_)
        .where(where)
        .order_by(*(loc.table.c[k] for k in loc.key))
        .limit(sa.bindparam(_LIMIT, type_=sa.Integer))
        .offset(sa.bindparam(_OFFSET, type_=sa.Integer))
    )
    return count, page


def _locations(fleet: Fleet, ds: Dataset, answer: HomeAnswer) -> list[Location]:
    if answer.status == "restricted":
        home = answer.homes.get(ds.name)
        loc = fleet.location(ds.name, home) if home else None
        return [loc] if loc is not None else []  # no table at home yet: nothing is home
    return list(fleet.locations(ds.name))


def read_records(
    fleet: Fleet, answer: HomeAnswer, sid: Any, ds: Dataset, limit: int, offset: int
) -> RecordsPage:
    """A page of *sid*'s records of *ds*, read where they live by the rule."""
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(f"limit must be 1..{MAX_LIMIT} and offset 0..{MAX_OFFSET}")
    locations = _locations(fleet, ds, answer)
    records: list[dict[str, Any]] = []
    skip, more = offset, False
    for loc in locations:
        count_q, page_q = _records_queries(loc, ds)
        with loc.store.connect(f"reading {ds.name} records") as conn:
            if len(locations) > 1 and skip:
                # whole stores before the page are skipped by their count
                count = int(conn.execute(count_q, {_SID: sid}).scalar_one())
                if count <= skip:
                    skip -= count
                    continue
            want = limit - len(records) + 1
            params = {_SID: sid, _LIMIT: want, _OFFSET: skip}
            rows = conn.execute(page_q, params).mappings().all()
        skip = 0
        for row in rows:
            if len(records) == limit:
                more = True
                break
            records.append({str(k): json_value(v) for k, v in row.items()})
        if more:
            break
    return RecordsPage(
        ds.name,
        tuple(loc.store.name for loc in locations),
        records,
        limit,
        offset,
        offset + limit if more else None,
    )
