"""The tamper-evident audit log: an RFC 6962 Merkle log with signed checkpoints.

- :mod:`~domicile.audit.merkle`: tree hashing, inclusion and consistency proofs;
- :mod:`~domicile.audit.note`: C2SP signed notes and tlog checkpoints;
- :mod:`~domicile.audit.log`: :class:`AuditLog`, the log in the state store;
- :mod:`~domicile.audit.verify`: :func:`verify_log` and :func:`verify_export`;
- :mod:`~domicile.audit.export`: :func:`export_log`, a folder anyone can verify;
- :mod:`~domicile.audit.cli`: the ``domicile audit`` and ``domicile keys`` commands.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from domicile.audit.export import ExportResult, export_log
    from domicile.audit.log import AuditLog, canonical_json
    from domicile.audit.verify import LogTampered, VerifyResult, verify_export, verify_log

__all__ = [
    "AuditLog",
    "ExportResult",
    "LogTampered",
    "VerifyResult",
    "canonical_json",
    "export_log",
    "verify_export",
    "verify_log",
]

# Imported on first use: ``domicile --help`` imports this package (for
# :mod:`domicile.audit.cli`) and must not pay for SQLAlchemy and cryptography.
_LAZY = {
    "AuditLog": "domicile.audit.log",
    "canonical_json": "domicile.audit.log",
    "ExportResult": "domicile.audit.export",
    "export_log": "domicile.audit.export",
    "LogTampered": "domicile.audit.verify",
    "VerifyResult": "domicile.audit.verify",
    "verify_export": "domicile.audit.verify",
    "verify_log": "domicile.audit.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
