"""The access errors: who failed to prove who they are, and who was refused.

They map to HTTP statuses in :mod:`domicile.service.errors` (401, 403) and to
exit codes here (``domicile access check``: 6 denied).
"""

from __future__ import annotations

from domicile.errors import DomicileError, Permanent

EXIT_DENIED = 6
"""The exit code of an access refused (see DESIGN.md, exit codes)."""


class Unauthenticated(DomicileError, Permanent):
    """No credentials, or credentials that are malformed, unknown or expired (HTTP 401)."""

    exit_code = 2


class AccessDenied(DomicileError, Permanent):
    """A known principal that the role or the policy refuses (HTTP 403, exit 6)."""

    exit_code = EXIT_DENIED


class NotFound(DomicileError, Permanent):
    """A subject, run or audit entry that does not exist (HTTP 404)."""

    exit_code = 2


class BadRequest(DomicileError, Permanent):
    """A malformed subject id, country or parameter (HTTP 422)."""

    exit_code = 2
