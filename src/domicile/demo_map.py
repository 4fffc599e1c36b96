"""The demo fleet's stores and its data map (what ``domicile demo`` writes as ``domicile.yaml``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DemoStore:
    """One SQL store of the demo fleet and the object store that is its twin."""

    name: str
    country: str
    region: str
    operator: str
    media: str

    @property
    def labels(self) -> dict[str, str]:
        """The store's labels as written in the data map."""
        return {"country": self.country, "region": self.region, "operator": self.operator}


STORES: tuple[DemoStore, ...] = (
    DemoStore("sg-main", "SG", "ap-southeast-1", "legacy", "media-sg"),
    DemoStore("us-va", "US", "us-east-1", "legacy", "media-us-va"),
    DemoStore("us-tx", "US", "us-south-1", "custodian", "media-us"),
    DemoStore("ca-mtl", "CA", "ca-central-1", "custodian", "media-ca"),
    DemoStore("au-syd", "AU", "ap-southeast-2", "custodian", "media-au"),
    DemoStore("nz-akl", "NZ", "ap-southeast-6", "custodian", "media-nz"),
)
BY_NAME = {s.name: s for s in STORES}

# Jurisdiction code -> its custodian home store.
HOMES: dict[str, str] = {"US": "us-tx", "CA": "ca-mtl", "AU": "au-syd", "NZ": "nz-akl"}


HEADER = """\
# domicile.yaml -- the data map of the domicile demo fleet.
#
# Written by `domicile demo`: six SQLite stores under fleet/ (plus local-folder
# object stores under media/ when built with media) holding a short-video app
# that grew up in Singapore.  Most records sit in the legacy stores sg-main and
# us-va; US, CA, AU and NZ users must live at their custodian home.
# Try: domicile scan, domicile plan, domicile run.  See DESIGN.md for the format.

"""


def dump_map(data: dict[str, Any]) -> str:
    # default_flow_style=None writes leaf collections inline ({country: US}, [id]),
    # which keeps the map as compact as the one in DESIGN.md.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def demo_data_map(directory: Path, media: bool) -> dict[str, Any]:
    """The data map of the demo, as plain data for yaml.safe_dump."""
    stores: dict[str, Any] = {
        s.name: {"url": f"sqlite:///fleet/{s.name}.db", "labels": s.labels} for s in STORES
    }
    if media:
        # Object stores need absolute file:// URLs; the map is tied to this folder.
        media_root = directory.resolve() / "media"
        for s in STORES:
            stores[s.media] = {"url": (media_root / s.media).as_uri(), "labels": s.labels}
    jurisdictions: dict[str, Any] = {}
    for code, home in HOMES.items():
        homes = [home, BY_NAME[home].media] if media else [home]
        jurisdictions[code] = {
            "countries": [code],
            "allowed": {"country": code, "operator": "custodian"},
            "home": homes,
        }
    videos: dict[str, Any] = {"table": "videos", "key": ["id"], "owner": "user_id"}
    if media:
        videos["blobs"] = {"column": "media_key"}
    datasets: dict[str, Any] = {
        "users": {"table": "users", "key": ["id"], "owner": "id"},
        "videos": videos,
        "comments": {"table": "comments", "key": ["id"], "owner": "author_id"},
        "likes": {"table": "likes", "key": ["user_id", "video_id"], "owner": "user_id"},
        "follows": {
            "table": "follows", "key": ["follower_id", "followee_id"], "owner": "follower_id",
        },
        "messages": {
            "table": "messages", "key": ["id"], "owners": ["sender_id", "recipient_id"],
            "multi_owner": "each",
        },
        "login_events": {"table": "login_events", "key": ["id"], "owner": "user_id"},
        "sounds": {"table": "sounds", "key": ["id"], "reference": True},
    }  # fmt: skip
    if media:
        datasets["avatars"] = {"objects": "avatars/{owner}/*"}
    return {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": stores,
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": jurisdictions,
        "datasets": datasets,
        "exceptions": [
            {
                "dataset": "videos",
                "where": {"visibility": "public"},
                "allowed": "any",
                "reason": "Public videos are served worldwide by the CDN",
                "approved_by": "Chief Privacy Officer",
                "expires": dt.date(2027, 6, 30),
            },
            {
                # Already expired: reports must say so rather than honour it.
                "dataset": "login_events",
                "where": {"kind": "fraud_review"},
                "allowed": {"country": "SG"},
                "reason": "Fraud investigation hold",
                "approved_by": "Head of Trust & Safety",
                "expires": dt.date(2025, 12, 31),
            },
        ],
    }
