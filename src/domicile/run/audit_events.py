"""What a run tells the audit log, and the signed checkpoint it ends with.

Events carry digests, counts, store and dataset names — never personal
data.  Record keys appear only as keyed hashes (HMAC with the deployment
key), so an auditor can confirm a given record's batch when shown the key,
while the log alone reveals nothing about anyone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from domicile import keys as keystore
from domicile.audit.log import AuditLog, stored_origin
from domicile.audit.merkle import leaf_hash, root_from_leaf_hashes
from domicile.model import DataMap
from domicile.run.journal_records import state_errors


def rows_root(digests_hex: list[str]) -> str:
    """RFC 6962 Merkle root over a batch's row digests (sorted), hex."""
    leaves = [leaf_hash(bytes.fromhex(d)) for d in sorted(digests_hex)]
    return root_from_leaf_hashes(leaves).hex()


def keys_dir(m: DataMap) -> Path:
    """Where the audit keys live (``audit.keys`` in the map, else beside it)."""
    return m.base_dir / m.audit_keys if m.audit_keys else keystore.default_keys_dir(m.path)


def deployment_key(m: DataMap) -> bytes:
    """The deployment's keyed-hash key (``hmac.key`` beside the map, or the environment).

    It MACs the journal, so it must not live in the state store; the first
    run creates the key files when none exist.
    """
    directory = keys_dir(m)
    if keystore.HMAC_ENV not in os.environ and not (directory / keystore.HMAC_KEY_FILE).exists():
        keystore.init_keys(directory)
    return keystore.load_hmac_key(directory)


class RunAudit:
    """An event sink for :func:`domicile.run.executor.execute` over the state store's log."""

    def __init__(self, m: DataMap, engine: sa.Engine):
        self.map = m
        # a full or read-only state store is a clear, resumable stop, never a traceback
        with state_errors(engine, "opening the audit log"):
            origin = m.audit_origin or stored_origin(engine) or keystore.default_origin()
            self.log = AuditLog(engine, origin)
        self.keys_dir = keys_dir(m)
        self._lock = threading.Lock()
        self.created_keys = False

    def hmac_key(self) -> bytes:
        """The deployment key for keyed hashes (created with the signing key if missing)."""
        self._ensure_keys()
        return keystore.load_hmac_key(self.keys_dir)

    def __call__(self, event: dict[str, Any]) -> None:
        """Append one event: a run's protocol steps hand them over one at a time."""
        self.append_all([event])

    def append_all(self, events: Sequence[dict[str, Any]]) -> None:
        """Append *events* in one transaction: all of them are in the log, or none.

        For a caller that holds several events at once (the Dask coordinator
        relaying what its workers queued): one commit for all instead of one
        each.  A batch's row digests become their Merkle root first.
        """
        for event in events:
            rows = event.pop("row_digests", None)
            if rows is not None:
                event["rows_root"] = rows_root(rows)
        with self._lock, state_errors(self.log.engine, "appending to the audit log"):
            self.log.append_many(events)

    def _ensure_keys(self) -> None:
        if not (self.keys_dir / "audit.key").exists():
            keystore.init_keys(self.keys_dir)
            self.created_keys = True

    def checkpoint(self) -> str:
        """Sign the log's current head (making the key pair on first use)."""
        self._ensure_keys()
        signer = keystore.load_signer(self.keys_dir / "audit.key")
        with self._lock, state_errors(self.log.engine, "signing an audit checkpoint"):
            return self.log.checkpoint(signer)
