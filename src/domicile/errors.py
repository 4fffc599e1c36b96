"""The error hierarchy of domicile.

Every failure a user can cause or meet is a :class:`DomicileError` with three
parts: *what* failed, *where* (a file:line, a store, a dataset, a batch) and a
*hint* saying what to do.  The CLI maps each class to an exit code in one
place (:data:`EXIT_CODES`); the HTTP API maps them to statuses in one place.

Retries are decided by two markers: :class:`Transient` errors (a dropped
connection, a lock timeout) may be retried with backoff; :class:`Permanent`
ones never are.
"""

from __future__ import annotations


class DomicileError(Exception):
    """Root of every error domicile raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __reduce__(self) -> tuple[object, ...]:
        # whatever a subclass's __init__ takes: an error raised on a Dask worker
        # arrives at the coordinator as the same class with the same fields
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def _rebuild(cls: type[DomicileError], message: str, state: dict[str, object]) -> DomicileError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class Transient:
    """Marker: the operation may succeed if retried later."""


class Permanent:
    """Marker: retrying will not help; a person must act."""


class ConfigError(DomicileError, Permanent):
    """The data map (or a command-line argument) is wrong."""

    exit_code = 2


class ConnectorError(DomicileError):
    """A store could not be reached or answered with an error."""

    exit_code = 2


class TransientConnectorError(ConnectorError, Transient):
    """A store failed in a way that a retry may cure (connection lost, lock timeout)."""


class PermanentConnectorError(ConnectorError, Permanent):
    """A store failed in a way a retry will not cure (bad credentials, missing table)."""


class ConflictError(DomicileError, Permanent):
    """A record at home has the same key but different content."""

    exit_code = 4


class VerificationError(DomicileError, Permanent):
    """What was copied does not match what the target holds."""

    exit_code = 4


class RunIncomplete(DomicileError):
    """A run stopped before every batch was done; it can be resumed."""

    exit_code = 4


class AuditIntegrityError(DomicileError, Permanent):
    """The audit log, a checkpoint or the journal does not verify: it was changed."""

    exit_code = 5


class StateStoreError(DomicileError, Permanent):
    """The state store (journal and audit log) cannot be read or written: full,
    read-only, locked or gone.  A run stops resumably."""

    exit_code = 4


class Interrupted(DomicileError):
    """SIGINT or SIGTERM: the run finished its current step and stopped, resumable."""

    exit_code = 4


def is_transient(exc: BaseException) -> bool:
    """True when *exc* is marked as worth retrying."""
    return isinstance(exc, Transient)


# Exit codes of the command line, in one place (see DESIGN.md).
EXIT_OK = 0
EXIT_VIOLATIONS = 3
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 4
EXIT_TAMPERED = 5


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error that reached the command line."""
    if isinstance(exc, DomicileError):
        return exc.exit_code
    return 1
