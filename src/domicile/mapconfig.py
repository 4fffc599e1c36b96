"""The data map's shape, as pydantic models: what keys exist and what type each value has.

:mod:`domicile.datamap` validates a file against :class:`MapCfg` and then
builds the frozen model (:mod:`domicile.model`) from it, with the checks that
compare entries with each other.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domicile.state import DEFAULT_STATE


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
