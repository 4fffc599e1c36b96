"""Load ``domicile.yaml`` into the model, validated, with errors that point home.

Parsing keeps each key's line so that every error reads like
``domicile.yaml:14 jurisdictions.US.home: store 'us-tx' is not defined
(defined: sg-main, us-va)``.  Shape is checked by pydantic; references between
sections (stores named by homes, datasets named by exceptions, owner paths)
are checked here.  Nothing in this module touches a store: reaching stores and
reflecting tables is :mod:`domicile.inspect`'s job.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domicile.countries import normalize_country
from domicile.errors import ConfigError
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
from domicile.state import DEFAULT_STATE, resolve_sqlite_url

Path_ = tuple[str | int, ...]

# --------------------------------------------------------------------------
# The shape of the file (pydantic).  Field names are the map's keys.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreCfg(_Strict):
    url: str
    labels: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)


class SubjectsCfg(_Strict):
    dataset: str
    id: str = "id"
    country: str = "country"


class JurisdictionCfg(_Strict):
    countries: list[str]
    allowed: dict[str, str] | list[dict[str, str]]
    home: list[str] | str


class BlobsCfg(_Strict):
    column: str
    stores: list[str] | None = None


class DatasetCfg(_Strict):
    table: str | None = None
    objects: str | None = None
    key: list[str] | str | None = None
    owner: str | None = None
    owners: list[str] | None = None
    multi_owner: Literal["all", "each"] = "all"
    reference: bool = False
    stores: list[str] | None = None
    blobs: BlobsCfg | None = None


class ExceptionCfg(_Strict):
    dataset: str
    where: dict[str, Any] = Field(default_factory=dict)
    allowed: Literal["any"] | dict[str, str] | list[dict[str, str]]
    reason: str
    approved_by: str
    expires: dt.date
    jurisdictions: list[str] | None = None

    @field_validator("reason", "approved_by")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: say why and who approved")
        return value


class AuditCfg(_Strict):
    keys: str | None = None  # folder of the audit keys, relative to the map
    origin: str | None = None  # the checkpoint origin line (a unique log name)


class MapCfg(_Strict):
    version: Literal[1]
    state: str = DEFAULT_STATE
    stores: dict[str, StoreCfg]
    subjects: SubjectsCfg
    jurisdictions: dict[str, JurisdictionCfg] = Field(default_factory=dict)
    datasets: dict[str, DatasetCfg]
    exceptions: list[ExceptionCfg] = Field(default_factory=list)
    on_conflict: Literal["fail", "keep-home", "overwrite"] = "fail"
    audit: AuditCfg = Field(default_factory=AuditCfg)


# --------------------------------------------------------------------------
# YAML with line numbers.


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's yes/no/on/off booleans.

    A country label ``NO`` (Norway) must stay the string "NO", not False.
    """


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _lines(node: yaml.Node, path: Path_, out: dict[Path_, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


class Located:
    """Turns a key path into ``file:line key.path`` for messages."""

    def __init__(self, path: Path, lines: Mapping[Path_, int]):
        self.path = path
        self.lines = lines

    def line(self, keys: Path_) -> int | None:
        """The line of the deepest known prefix of *keys*."""
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return None

    def at(self, *keys: str | int) -> str:
        """``file:line dotted.key`` for the given key path."""
        line = self.line(keys)
        dotted = ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in keys)
        name = self.path.name
        place = f"{name}:{line}" if line else name
        return f"{place} {dotted}" if dotted else place


def read_yaml(path: Path) -> tuple[Any, Located]:
    """Parse the YAML file, keeping lines; syntax errors become ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"data map not found: {path}",
            hint="create one (see the README), run `domicile discover`, or pass -c PATH",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read data map {path}: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"YAML syntax error: {problem}",
            where=where,
            hint="check indentation and quoting near that line",
        ) from None
    lines: dict[Path_, int] = {}
    if node is not None:
        _lines(node, (), lines)
    return data, Located(path, lines)


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
            f"{err['msg'].lower()} (got {err.get('input')!r})",
            where=where,
            hint=f"use one of {expected}",
        )
    return ConfigError(f"{err['msg']} (got {err.get('input')!r})", where=where)


# --------------------------------------------------------------------------
# Building the model.


def _selectors(raw: Mapping[str, str] | list[dict[str, str]]) -> tuple[Selector, ...]:
    items = [raw] if isinstance(raw, Mapping) else raw
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


def _mask(url: str) -> str:
    if "://" not in url or url.startswith(("file:", "s3:")):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is reported by _store; never echo a secret
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _store(name: str, cfg: StoreCfg, loc: Located, base: Path, env: Mapping[str, str]) -> Store:
    raw_url = cfg.url
    url = expand_env(raw_url, loc.at("stores", name, "url"), env)
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
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("file", "s3"):
        if scheme == "file":
            path = url[len("file://") :] if url.startswith("file://") else url[len("file:") :]
            url = "file://" + str((base / path).resolve()) if not path.startswith("/") else url
        return Store(name, url, _mask(url), labels, "objects", options)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"store URL '{_mask(raw_url)}' is not a database URL",
            where=loc.at("stores", name, "url"),
            hint="use an SQLAlchemy URL (sqlite:///file.db, postgresql://..., mysql://...) "
            "or file:///folder, s3://bucket/prefix",
        ) from None
    url = resolve_sqlite_url(url, base)
    return Store(name, url, _mask(url), labels, "sql", options)


def _defined(names: Any) -> str:
    return ", ".join(names) or "none"


def _check_name(kind: str, name: str, known: Mapping[str, Any], where: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise ConfigError(
            f"{kind} '{name}' is not defined (defined: {_defined(known)})", where=where, hint=hint
        )


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
    for s in cfg.stores or []:
        _check_name("store", s, stores, loc.at("datasets", name, "stores"))
    owners = tuple(
        parse_owner(t, loc.at("datasets", name, "owners" if cfg.owners else "owner"))
        for t in owner_texts
    )
    if cfg.objects is not None:
        if "{owner}" not in cfg.objects:
            raise ConfigError(
                f"object pattern '{cfg.objects}' does not name the owner",
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
        for s in cfg.blobs.stores or []:
            _check_name("store", s, stores, loc.at("datasets", name, "blobs", "stores"))
            if stores[s].kind != "objects":
                raise ConfigError(
                    f"blobs.stores names '{s}', which is a SQL store",
                    where=loc.at("datasets", name, "blobs", "stores"),
                    hint="list object stores (file:// or s3://) only",
                )
        blobs = Blobs(cfg.blobs.column, tuple(cfg.blobs.stores) if cfg.blobs.stores else None)
    key: tuple[str, ...] = ()
    if cfg.key is not None:
        key = (cfg.key,) if isinstance(cfg.key, str) else tuple(cfg.key)
    return Dataset(
        name=name,
        table=cfg.table,
        objects=cfg.objects,
        key=key,
        owners=owners,
        multi_owner=cfg.multi_owner,
        reference=cfg.reference,
        stores=tuple(cfg.stores) if cfg.stores else None,
        blobs=blobs,
    )


def _jurisdiction(
    name: str, cfg: JurisdictionCfg, loc: Located, stores: Mapping[str, Store]
) -> Jurisdiction:
    if name == UNRESTRICTED:
        raise ConfigError(
            f"'{UNRESTRICTED}' is reserved for subjects no jurisdiction names",
            where=loc.at("jurisdictions", name),
            hint="choose another name",
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
    allowed = _selectors(cfg.allowed)
    for sel in allowed:
        if "country" in sel and normalize_country(sel["country"]):
            sel["country"] = normalize_country(sel["country"]) or sel["country"]  # type: ignore[index]
    homes = [cfg.home] if isinstance(cfg.home, str) else list(cfg.home)
    if not homes:
        raise ConfigError(
            "home must name at least one store", where=loc.at("jurisdictions", name, "home")
        )
    for h in homes:
        _check_name("store", h, stores, loc.at("jurisdictions", name, "home"))
        if not any(selector_matches(s, stores[h].labels) for s in allowed):
            raise ConfigError(
                f"home store '{h}' (labels {dict(stores[h].labels)}) is not allowed by the "
                f"jurisdiction's own rule {[dict(s) for s in allowed]}",
                where=loc.at("jurisdictions", name, "home"),
                hint="data moved there would still break the rule: fix the labels or the home",
            )
    return Jurisdiction(name, frozenset(countries), allowed, tuple(homes))


def build_map(data: Any, loc: Located, env: Mapping[str, str] | None = None) -> DataMap:
    """Validate parsed YAML *data* and build the :class:`DataMap`."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise ConfigError(
            "the data map must be a YAML mapping",
            where=loc.at(),
            hint="start with 'version: 1' and the sections stores, subjects, datasets",
        )
    try:
        cfg = MapCfg.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc, loc) from None
    base = loc.path.parent
    stores = {n: _store(n, s, loc, base, env) for n, s in cfg.stores.items()}
    datasets = {n: _dataset(n, d, loc, stores) for n, d in cfg.datasets.items()}
    jurisdictions = {n: _jurisdiction(n, j, loc, stores) for n, j in cfg.jurisdictions.items()}
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
    sub = cfg.subjects
    _check_name("dataset", sub.dataset, datasets, loc.at("subjects", "dataset"))
    if datasets[sub.dataset].table is None:
        raise ConfigError(
            "the subjects directory must be a table dataset", where=loc.at("subjects", "dataset")
        )
    waivers = []
    for i, e in enumerate(cfg.exceptions):
        _check_name("dataset", e.dataset, datasets, loc.at("exceptions", i, "dataset"))
        for jn in e.jurisdictions or []:
            _check_name("jurisdiction", jn, jurisdictions, loc.at("exceptions", i, "jurisdictions"))
        allowed = "any" if e.allowed == "any" else _selectors(e.allowed)
        waivers.append(
            Waiver(
                index=i,
                dataset=e.dataset,
                where=dict(e.where),
                allowed=allowed,  # type: ignore[arg-type]
                reason=e.reason,
                approved_by=e.approved_by,
                expires=e.expires,
                jurisdictions=tuple(e.jurisdictions) if e.jurisdictions else None,
            )
        )
    state = expand_env(cfg.state, loc.at("state"), env)
    return DataMap(
        path=loc.path,
        version=cfg.version,
        state=state,
        stores=stores,
        subjects=Subjects(sub.dataset, sub.id, sub.country),
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
