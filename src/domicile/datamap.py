"""Load ``domicile.yaml`` into the model, validated, with errors that point home.

Parsing (:mod:`domicile.yamlsafe`) keeps each key's line so that every error
reads like ``domicile.yaml:14 jurisdictions.US.home: store 'us-tx' is not
defined (defined: sg-main, us-va)``, and refuses hostile YAML (too big, too
deep, alias bombs, repeated keys).  Shape is checked by pydantic; references
between sections (stores named by homes, datasets named by exceptions, owner
paths) are checked here, and so is every map that would let domicile lose
data without a word: one table claimed by two datasets, two object datasets
matching the same keys, two store names for one database, an empty selector
that allows every store, an empty list that silently means "all", a journal
kept in memory or in ``/proc``.  Nothing in this module touches a store:
reaching stores and reflecting tables is :mod:`domicile.fleet`'s job.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from domicile.countries import normalize_country
from domicile.errors import ConfigError
from domicile.mapcheck import (
    CONTROL,
    MAX_PATTERN,
    OBJECT_SCHEMES,
    SQL_SCHEMES,
    check_objects,
    check_places,
    check_tables,
    mask_url,
    reach_of,
    resolved,
    sql_options,
    sql_url,
    state_url,
    url_scheme,
)
from domicile.mapconfig import (
    DatasetCfg,
    ExceptionCfg,
    JurisdictionCfg,
    MapCfg,
    StoreCfg,
)
from domicile.model import (
    UNRESTRICTED,
    Blobs,
    DataMap,
    Dataset,
    Hop,
    Jurisdiction,
    Owner,
    Selector,
    Store,
    Subjects,
    Waiver,
    selector_matches,
)
from domicile.yamlsafe import Located, Path_, read_yaml

# --------------------------------------------------------------------------
# The shape of the file (pydantic).  Field names are the map's keys.


# --------------------------------------------------------------------------
# ${VAR} expansion.

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, where: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` from *env*; a missing variable is a ConfigError naming it."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(
                f"environment variable {name} is not set",
                where=where,
                hint=f"export {name}=... before running domicile",
            )
        return env[name]

    return _VAR.sub(sub, value)


def _expand_options(options: Mapping[str, Any], where: str, env: Mapping[str, str]) -> dict:
    return {k: expand_env(v, where, env) if isinstance(v, str) else v for k, v in options.items()}


# --------------------------------------------------------------------------
# pydantic errors → ConfigError with a line and a did-you-mean.


def _unwrap(annotation: Any) -> Any:
    """The model class reached through Optional / Union / list / dict, if any."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation
    for arg in get_args(annotation):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _model_at(loc: Path_) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of *loc* (for did-you-mean)."""
    current: Any = MapCfg
    i = 0
    while i < len(loc) - 1:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(loc[i]))
        if field is None:
            return None
        annotation = field.annotation
        origin = get_origin(annotation)
        if origin is Union or origin is None or str(origin) == "types.UnionType":
            pass
        if origin in (dict, list) or any(
            get_origin(a) in (dict, list) for a in get_args(annotation)
        ):
            i += 1  # the dict key or list index
        current = _unwrap(annotation)
        i += 1
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _pydantic_error(exc: ValidationError, loc_of: Located) -> ConfigError:
    err = exc.errors()[0]
    loc: Path_ = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    # Union members add their type name to loc ("list[...]", "function-after..."); drop them.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p in {"str", "dict", "list"}))
    where = loc_of.at(*loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = sorted(model.model_fields) if model else []
        bad = str(loc[-1])
        close = difflib.get_close_matches(bad, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(known)}"
        return ConfigError(f"unknown key '{bad}'", where=where, hint=hint)
    if kind == "missing":
        return ConfigError(f"required key '{loc[-1]}' is missing", where=where)
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return ConfigError(
            f"{err['msg'].lower()} (got {_short(err.get('input'))})",
            where=where,
            hint=f"use one of {expected}",
        )
    return ConfigError(f"{err['msg']} (got {_short(err.get('input'))})", where=where)


def _short(value: Any) -> str:
    """repr() cut to a line: a hostile value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------
# Building the model.


def _selectors(
    raw: Mapping[str, str] | list[dict[str, str]], where: str, any_hint: str
) -> tuple[Selector, ...]:
    """The selectors of an ``allowed:``; an empty list or an empty selector is refused."""
    items = [raw] if isinstance(raw, Mapping) else raw
    if not items:
        raise ConfigError(
            "allowed: [] allows no store",
            where=where,
            hint="give a label selector such as {country: US}, or a list of them",
        )
    if any(not s for s in items):
        # {} matches every store: almost always a selector left half-written
        raise ConfigError("an empty selector {} matches every store", where=where, hint=any_hint)
    return tuple({str(k): str(v) for k, v in s.items()} for s in items)


def parse_owner(text: str, where: str) -> Owner:
    """Parse ``col`` or ``a -> T.b -> c [-> U.d -> e ...]`` into an :class:`Owner`."""
    parts = [p.strip() for p in text.split("->")]
    if any(not p for p in parts) or len(parts) % 2 == 0:
        raise ConfigError(
            f"owner path '{text}' is malformed",
            where=where,
            hint="write a column, or 'column -> table.match_column -> read_column' (hops repeat)",
        )
    hops = []
    for i in range(1, len(parts), 2):
        table, dot, match = parts[i].partition(".")
        if not dot or not table or not match:
            raise ConfigError(
                f"owner path '{text}': hop '{parts[i]}' must be table.column",
                where=where,
                hint="for example: invoice_id -> invoice.invoice_id -> customer_id",
            )
        hops.append(Hop(table=table, match=match, read=parts[i + 1]))
    return Owner(column=parts[0], hops=tuple(hops))


def _subjects(
    dataset: str, id_text: str, country_text: str, datasets: Mapping[str, Dataset], loc: Located
) -> Subjects:
    """The directory: its id and country as columns or owner paths.

    Every table a path goes through must be a declared dataset: its rows then
    reach the homes with the subjects (a reference dataset is copied, a
    personal one moves), so the directory still resolves there after a move.
    """
    paths = {}
    for name, text in (("id", id_text), ("country", country_text)):
        where = loc.at("subjects", name)
        owner = parse_owner(text, where)
        tables = {d.table: d for d in datasets.values() if d.table is not None}
        for hop in owner.hops:
            if hop.table not in tables:
                raise ConfigError(
                    f"subjects.{name} goes through table '{hop.table}', which no dataset declares",
                    where=where,
                    hint=f"declare it (for a shared catalogue: {hop.table}: {{table: "
                    f"{hop.table}, reference: true}}) so that homes get the rows the path needs",
                )
        paths[name] = owner if owner.hops else None
    return Subjects(dataset, id_text, country_text, paths["id"], paths["country"])


def _state(raw: str, loc: Located, base: Path, env: Mapping[str, str]) -> str:
    """The state store URL (journal, lease, audit log), expanded and checked."""
    where = loc.at("state")
    return state_url(expand_env(raw, where, env), where, base)


def _store(name: str, cfg: StoreCfg, loc: Located, base: Path, env: Mapping[str, str]) -> Store:
    where = loc.at("stores", name, "url")
    raw_url = cfg.url
    url = expand_env(raw_url, where, env)
    options = _expand_options(cfg.options, loc.at("stores", name, "options"), env)
    labels = {str(k): str(v) for k, v in cfg.labels.items()}
    if "country" in labels:
        code = normalize_country(labels["country"])
        if code is None:
            raise ConfigError(
                f"label country '{labels['country']}' is not a country",
                where=loc.at("stores", name, "labels", "country"),
                hint="use an ISO 3166-1 code such as US, SG or CA",
            )
        labels["country"] = code
    if CONTROL.search(url):
        raise ConfigError(
            f"store {name}: the URL contains a control character",
            where=where,
            hint="check the quoting, and the values of any ${VAR} in it",
        )
    scheme = url_scheme(url)
    if scheme not in SQL_SCHEMES + OBJECT_SCHEMES:
        what = f"unsupported URL scheme '{scheme}'" if scheme else "the URL has no scheme"
        raise ConfigError(
            f"store {name}: {what} (supported: {', '.join(SQL_SCHEMES + OBJECT_SCHEMES)})",
            where=where,
            hint="sqlite:///file.db, postgresql://..., mysql://..., mariadb://..., "
            "file:///folder or s3://bucket/prefix",
        )
    if scheme == "file":
        path = url[len("file://") :] if url.startswith("file://") else url[len("file:") :]
        root = resolved(base / path, f"store {name}", where)  # base / "/abs" is /abs
        if not path or root == base or root in base.parents:
            # the map's folder holds .domicile/ (journal, audit keys): never objects to move
            raise ConfigError(
                f"store {name}: folder {root} holds the data map's own folder",
                where=where,
                hint="point the store at a folder of its own, e.g. file:///srv/media-sg",
            )
        url = "file://" + str(root) if not path.startswith("/") else url
        return Store(name, url, mask_url(url), labels, "objects", options)
    if scheme == "s3":
        if not url.partition("://")[2].partition("/")[0]:
            raise ConfigError(
                f"store {name}: the s3 URL names no bucket", where=where, hint="s3://bucket/prefix"
            )
        return Store(name, url, mask_url(url), labels, "objects", options)
    url = sql_url(url, f"store {name}", where, base)
    options = sql_options(name, options, loc.at("stores", name, "options"))
    return Store(name, url, mask_url(url), labels, "sql", options)


def _defined(names: Any) -> str:
    return ", ".join(names) or "none"


def _check_name(kind: str, name: str, known: Mapping[str, Any], where: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise ConfigError(
            f"{kind} '{name}' is not defined (defined: {_defined(known)})", where=where, hint=hint
        )


def _store_list(
    names: list[str] | None,
    kind: str,
    stores: Mapping[str, Store],
    where: str,
) -> tuple[str, ...] | None:
    """A ``stores:`` list: known names of the right kind; [] is refused (None means all)."""
    if names is None:
        return None
    if not names:
        raise ConfigError(
            "stores: [] names no store",
            where=where,
            hint="list the stores, or remove the key to mean every store that has the data",
        )
    for s in names:
        _check_name("store", s, stores, where)
        if stores[s].kind != kind:
            # fleet would skip it silently and the data there would never be looked at
            other = "a SQL store" if stores[s].kind == "sql" else "an object store"
            raise ConfigError(
                f"stores names '{s}', which is {other}",
                where=where,
                hint="list SQL stores for a table, object stores (file://, s3://) for objects",
            )
    return tuple(names)


def _dataset(name: str, cfg: DatasetCfg, loc: Located, stores: Mapping[str, Store]) -> Dataset:
    at = loc.at("datasets", name)
    if (cfg.table is None) == (cfg.objects is None):
        raise ConfigError(
            "a dataset needs exactly one of 'table' or 'objects'",
            where=at,
            hint="table: NAME for rows in SQL stores; objects: 'prefix/{owner}/*' for files",
        )
    owner_texts = ([cfg.owner] if cfg.owner else []) + list(cfg.owners or [])
    if cfg.owner and cfg.owners:
        raise ConfigError("give 'owner' or 'owners', not both", where=at)
    if not owner_texts and not cfg.reference and cfg.objects is None:
        raise ConfigError(
            "a personal dataset needs an owner",
            where=at,
            hint="owner: COLUMN (or a path a -> T.b -> c), or reference: true for shared data",
        )
    if cfg.reference and owner_texts:
        raise ConfigError(
            "a reference dataset has no owner", where=loc.at("datasets", name, "owner")
        )
    kind = "sql" if cfg.table is not None else "objects"
    in_stores = _store_list(cfg.stores, kind, stores, loc.at("datasets", name, "stores"))
    owners = tuple(
        parse_owner(t, loc.at("datasets", name, "owners" if cfg.owners else "owner"))
        for t in owner_texts
    )
    if cfg.objects is not None:
        if cfg.objects.count("{owner}") != 1 or len(cfg.objects) > MAX_PATTERN:
            raise ConfigError(
                f"object pattern '{cfg.objects[:MAX_PATTERN]}' must name the owner once "
                f"and be at most {MAX_PATTERN} characters",
                where=loc.at("datasets", name, "objects"),
                hint="put {owner} where the subject id stands, e.g. avatars/{owner}/*",
            )
        if any(o.hops for o in owners):
            raise ConfigError("an object dataset's owner is read from the key; no paths", where=at)
        owners = (Owner("{owner}"),)
    blobs = None
    if cfg.blobs is not None:
        if cfg.table is None:
            raise ConfigError(
                "blobs belong to a table dataset", where=loc.at("datasets", name, "blobs")
            )
        where = loc.at("datasets", name, "blobs", "stores")
        blobs = Blobs(cfg.blobs.column, _store_list(cfg.blobs.stores, "objects", stores, where))
    key: tuple[str, ...] = ()
    if cfg.key is not None:
        key = (cfg.key,) if isinstance(cfg.key, str) else tuple(cfg.key)
        if not key:
            raise ConfigError(
                "key: [] names no column",
                where=loc.at("datasets", name, "key"),
                hint="list the key columns, or remove the key to use the table's primary key",
            )
    return Dataset(
        name=name,
        table=cfg.table,
        objects=cfg.objects,
        key=key,
        owners=owners,
        multi_owner=cfg.multi_owner,
        reference=cfg.reference,
        stores=in_stores,
        blobs=blobs,
    )


def _jurisdiction(
    name: str,
    cfg: JurisdictionCfg,
    loc: Located,
    stores: Mapping[str, Store],
    needs: Mapping[str, str],
) -> Jurisdiction:
    """One jurisdiction; *needs* maps a store kind its home must include to the reason."""
    if name == UNRESTRICTED:
        raise ConfigError(
            f"'{UNRESTRICTED}' is reserved for subjects no jurisdiction names",
            where=loc.at("jurisdictions", name),
            hint="choose another name",
        )
    if not cfg.countries:
        raise ConfigError(
            "countries: [] names no country: the jurisdiction would hold no subjects",
            where=loc.at("jurisdictions", name, "countries"),
            hint="list its countries (countries: [US]), or remove the jurisdiction",
        )
    countries = set()
    for i, raw in enumerate(cfg.countries):
        code = normalize_country(raw)
        if code is None:
            raise ConfigError(
                f"'{raw}' is not a country",
                where=loc.at("jurisdictions", name, "countries", i),
                hint="use ISO 3166-1 codes such as US, CA, AU, NZ",
            )
        countries.add(code)
    allowed = _selectors(
        cfg.allowed,
        loc.at("jurisdictions", name, "allowed"),
        "name the labels a store must have (allowed: {country: US}); to leave these "
        "subjects unrestricted, remove the jurisdiction",
    )
    for sel in allowed:
        if "country" in sel and normalize_country(sel["country"]):
            sel["country"] = normalize_country(sel["country"]) or sel["country"]  # type: ignore[index]
    homes = [cfg.home] if isinstance(cfg.home, str) else list(cfg.home)
    where = loc.at("jurisdictions", name, "home")
    if not homes:
        raise ConfigError("home must name at least one store", where=where)
    for h in homes:
        _check_name("store", h, stores, where)
        if not any(selector_matches(s, stores[h].labels) for s in allowed):
            raise ConfigError(
                f"home store '{h}' (labels {dict(stores[h].labels)}) is not allowed by the "
                f"jurisdiction's own rule {[dict(s) for s in allowed]}",
                where=where,
                hint="data moved there would still break the rule: fix the labels or the home",
            )
    for kind, reason in needs.items():
        if not any(stores[h].kind == kind for h in homes):
            # caught here rather than by placement in the middle of a run
            label = "SQL" if kind == "sql" else "object"
            raise ConfigError(
                f"home names no {label} store, but {reason} must be able to move here",
                where=where,
                hint=f"add a {'database' if kind == 'sql' else 'file:// or s3://'} store "
                "the jurisdiction allows to home",
            )
    return Jurisdiction(name, frozenset(countries), allowed, tuple(homes))


def _where(where: Mapping[str, Any], at: str) -> dict[str, Any]:
    """An exception's row filter: column -> scalar, list of scalars, or null."""
    scalar = (str, int, float, dt.date)  # bool is an int; dt.datetime a dt.date
    for column, value in where.items():
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, scalar) for v in values):
            raise ConfigError(
                f"where: column '{column}' must be compared with a value, a list or null "
                f"(got {_short(value)})",
                where=at,
                hint="write column: value (=), column: [a, b] (IN) or column: null (IS NULL)",
            )
    return dict(where)


def _waiver(i: int, e: ExceptionCfg, loc: Located, datasets: Mapping[str, Dataset],
            jurisdictions: Mapping[str, Jurisdiction]) -> Waiver:  # fmt: skip
    _check_name("dataset", e.dataset, datasets, loc.at("exceptions", i, "dataset"))
    if e.jurisdictions is not None and not e.jurisdictions:
        # [] would be read as "no restriction", i.e. every jurisdiction: refuse the ambiguity
        raise ConfigError(
            "jurisdictions: [] names no jurisdiction",
            where=loc.at("exceptions", i, "jurisdictions"),
            hint="list the jurisdictions, or remove the key to cover them all",
        )
    for jn in e.jurisdictions or []:
        _check_name("jurisdiction", jn, jurisdictions, loc.at("exceptions", i, "jurisdictions"))
    if e.where and not datasets[e.dataset].is_sql:
        raise ConfigError(
            "an exception for an object dataset cannot filter rows: where: would be ignored",
            where=loc.at("exceptions", i, "where"),
            hint="remove where: (the exception then covers every object of the dataset)",
        )
    at = loc.at("exceptions", i, "allowed")
    allowed = "any" if e.allowed == "any" else _selectors(e.allowed, at, "write allowed: any")
    return Waiver(
        index=i,
        dataset=e.dataset,
        where=_where(e.where, loc.at("exceptions", i, "where")),
        allowed=allowed,  # type: ignore[arg-type]
        reason=e.reason,
        approved_by=e.approved_by,
        expires=e.expires,
        jurisdictions=tuple(e.jurisdictions) if e.jurisdictions else None,
    )


# --------------------------------------------------------------------------
# The whole map.


def build_map(data: Any, loc: Located, env: Mapping[str, str] | None = None) -> DataMap:
    """Validate parsed YAML *data* and build the :class:`DataMap`."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise ConfigError(
            f"the data map must be a YAML mapping (found {type(data).__name__})",
            where=loc.at(),
            hint="start with 'version: 1' and the sections stores, subjects, datasets",
        )
    try:
        cfg = MapCfg.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc, loc) from None
    base = loc.path.parent
    stores = {n: _store(n, s, loc, base, env) for n, s in cfg.stores.items()}
    check_places(stores, loc)
    datasets = {n: _dataset(n, d, loc, stores) for n, d in cfg.datasets.items()}
    needs: dict[str, str] = {}
    personal = [d.name for d in datasets.values() if d.is_sql and not d.reference]
    if personal:
        needs["sql"] = f"dataset '{personal[0]}'"
    objects = [d.name for d in datasets.values() if d.objects is not None or d.blobs is not None]
    if objects:
        needs["objects"] = f"the objects of dataset '{objects[0]}'"
    jurisdictions = {
        n: _jurisdiction(n, j, loc, stores, needs) for n, j in cfg.jurisdictions.items()
    }
    seen: dict[str, str] = {}
    for j in jurisdictions.values():
        for c in sorted(j.countries):
            if c in seen:
                raise ConfigError(
                    f"country {c} is in both jurisdictions {seen[c]} and {j.name}",
                    where=loc.at("jurisdictions", j.name, "countries"),
                    hint="each country belongs to one jurisdiction",
                )
            seen[c] = j.name
    reach = reach_of(stores, jurisdictions)
    check_tables(datasets, reach, loc)
    check_objects(datasets, reach, loc)
    sub = cfg.subjects
    _check_name("dataset", sub.dataset, datasets, loc.at("subjects", "dataset"))
    if datasets[sub.dataset].table is None:
        raise ConfigError(
            "the subjects directory must be a table dataset", where=loc.at("subjects", "dataset")
        )
    subjects = _subjects(sub.dataset, sub.id, sub.country, datasets, loc)
    waivers = [_waiver(i, e, loc, datasets, jurisdictions) for i, e in enumerate(cfg.exceptions)]
    return DataMap(
        path=loc.path,
        version=cfg.version,
        state=_state(cfg.state, loc, base, env),
        stores=stores,
        subjects=subjects,
        jurisdictions=jurisdictions,
        datasets=datasets,
        exceptions=tuple(waivers),
        on_conflict=cfg.on_conflict,
        audit_keys=cfg.audit.keys,
        audit_origin=cfg.audit.origin,
        lines=loc.lines,
    )


def load_map(path: Path | str, env: Mapping[str, str] | None = None) -> DataMap:
    """Read, validate and build the data map at *path*."""
    path = Path(path).resolve()
    data, loc = read_yaml(path)
    return build_map(data, loc, env)


def locate(datamap: DataMap, *keys: str | int) -> str:
    """``file:line key.path`` of a key in the map (for errors raised after loading)."""
    return Located(datamap.path, datamap.lines).at(*keys)
