"""Domain errors. The API layer maps each class to a gRPC status code via ``grpc_code_name``.

``reason`` carries the Neutron exception name (ErrorInfo.reason), ``field_violations`` the
BadRequest field violations as ``(field path, description)`` pairs, ``metadata`` the
ErrorInfo metadata.
"""

from __future__ import annotations

from collections.abc import Iterable


class BaryonError(Exception):
    grpc_code_name = "UNKNOWN"
    default_reason = "NeutronError"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        violations: Iterable[tuple[str, str]] | None = None,
        **metadata: str,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field_violations: list[tuple[str, str]] = []
        if field is not None:
            self.field_violations.append((field, message))
        if violations is not None:
            self.field_violations.extend(violations)
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(BaryonError):
    grpc_code_name = "INVALID_ARGUMENT"
    default_reason = "InvalidInput"


class NotFound(BaryonError):
    grpc_code_name = "NOT_FOUND"
    default_reason = "NotFound"


class FailedPrecondition(BaryonError):
    """ "In use" and other state conflicts (Neutron's Conflict / InUse, HTTP 409)."""

    grpc_code_name = "FAILED_PRECONDITION"
    default_reason = "Conflict"


Conflict = FailedPrecondition


class AlreadyExists(BaryonError):
    grpc_code_name = "ALREADY_EXISTS"
    default_reason = "Conflict"


class ResourceExhausted(BaryonError):
    grpc_code_name = "RESOURCE_EXHAUSTED"
    default_reason = "OverQuota"


class Aborted(BaryonError):
    """Stale revision / lost optimistic-concurrency race."""

    grpc_code_name = "ABORTED"
    default_reason = "RevisionNumberConstraintFailed"


class Unauthenticated(BaryonError):
    grpc_code_name = "UNAUTHENTICATED"
    default_reason = "NotAuthenticated"


class PermissionDenied(BaryonError):
    grpc_code_name = "PERMISSION_DENIED"
    default_reason = "NotAuthorized"


class Unavailable(BaryonError):
    """Backing store unreachable; safe for the client to retry."""

    grpc_code_name = "UNAVAILABLE"
    default_reason = "ServiceUnavailable"
