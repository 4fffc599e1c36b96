"""The tamper-evident audit log: an RFC 6962 Merkle log with signed checkpoints.

- :mod:`~domicile.audit.merkle`: tree hashing, inclusion and consistency proofs;
- :mod:`~domicile.audit.note`: C2SP signed notes and tlog checkpoints;
- :mod:`~domicile.audit.log`: :class:`AuditLog`, the log in the state store;
- :mod:`~domicile.audit.verify`: :func:`verify_log` and :func:`verify_export`;
- :mod:`~domicile.audit.export`: :func:`export_log`, a folder anyone can verify;
- :mod:`~domicile.audit.cli`: the ``domicile audit`` and ``domicile keys`` commands.
"""

from __future__ import annotations

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
