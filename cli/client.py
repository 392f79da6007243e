"""Channel, authentication and error handling for the ``baryon`` command.

Everything that talks to the controller goes through a :class:`Transport`, so the
rest of the CLI (request building, name resolution, output) can be exercised with
a fake transport and no server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DEFAULT_CONTROLLER = "127.0.0.1:9696"
DEFAULT_TIMEOUT = 30.0
TOKEN_FILE = "admin-token"
DETAILS_KEY = "grpc-status-details-bin"


class CliError(Exception):
    """An expected failure: reported as one ``Error: ...`` line, exit code 1."""

    exit_code = 1


class UsageError(CliError):
    """The command line is well-formed for argparse but still unusable: exit code 2."""

    exit_code = 2


class ApiError(CliError):
    """A non-OK gRPC status returned by the controller."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        status: status_pb2.Status | None = None,
        hint: str = "",
    ) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.hint = hint
        super().__init__(format_api_error(code.name, message, status, hint))


class Transport(Protocol):
    """Performs one unary RPC; raises :class:`CliError` on failure."""

    def call(self, method: MethodDescriptor, request: Message) -> Message: ...


# ---------------------------------------------------------------------------
# Settings: controller address, token, timeout


def state_dir(env: Mapping[str, str]) -> Path:
    """The state directory as CONVENTIONS.md defines it."""
    explicit = env.get("BARYON_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/baryon")
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "baryon"


@dataclass(frozen=True)
class Token:
    value: str | None
    # Where it came from, or why none was found; used in UNAUTHENTICATED hints.
    origin: str


def find_token(explicit: str | None, env: Mapping[str, str]) -> Token:
    if explicit:
        return Token(explicit, "--token")
    if env.get("BARYON_TOKEN"):
        return Token(env["BARYON_TOKEN"], "BARYON_TOKEN")
    path = state_dir(env) / TOKEN_FILE
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return Token(None, f"no token given and {path} does not exist")
    except OSError as err:
        return Token(None, f"no token given and {path} is unreadable ({err.strerror})")
    if not value:
        return Token(None, f"no token given and {path} is empty")
    return Token(value, str(path))


@dataclass(frozen=True)
class Settings:
    controller: str
    token: Token
    timeout: float

    @classmethod
    def from_options(
        cls,
        controller: str | None,
        token: str | None,
        timeout: float | None,
        env: Mapping[str, str],
    ) -> Settings:
        return cls(
            controller=controller or env.get("BARYON_CONTROLLER") or DEFAULT_CONTROLLER,
            token=find_token(token, env),
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        )


# ---------------------------------------------------------------------------
# Errors


def _violation(subject: str, description: str, message: str) -> str:
    if not subject or not description:
        return subject or description
    # Errors about one field often repeat the status message as the description.
    return subject if description == message else f"{subject}: {description}"


def _detail_lines(status: status_pb2.Status, message: str) -> tuple[list[str], list[str]]:
    violations: list[str] = []
    reasons: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [
                _violation(v.field, v.description, message) for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            violations += [
                _violation(p.subject, p.description, message) for p in failure.violations
            ]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason:
                reasons.append(info.reason)
    return violations, reasons


def format_api_error(
    code_name: str, message: str, status: status_pb2.Status | None = None, hint: str = ""
) -> str:
    """``CODE: message (field: violation; ...) [Reason]`` on a single line."""
    text = f"{code_name}: {' '.join(message.split()) or '(no message)'}"
    if status is not None:
        violations, reasons = _detail_lines(status, message)
        if violations:
            text += f" ({'; '.join(violations)})"
        if reasons:
            text += f" [{', '.join(reasons)}]"
    if hint:
        text += f"; {hint}"
    return " ".join(text.splitlines())


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    try:
        return cast("status_pb2.Status | None", rpc_status.from_call(call))
    except ValueError:
        # Code or message disagree with the trailer; the trailer is still the better source.
        for key, value in call.trailing_metadata() or ():
            if key == DETAILS_KEY and isinstance(value, bytes):
                return status_pb2.Status.FromString(value)
        return None


def error_from_rpc(err: grpc.RpcError, settings: Settings) -> CliError:
    """Turn a failed call into the one-line error the user sees."""
    if not isinstance(err, grpc.Call):
        return CliError(f"request to the controller at {settings.controller} failed: {err}")
    code = err.code()
    details = err.details() or ""
    status = _rich_status(err)
    if status is None and code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach the controller at {settings.controller}: {details}")
    if status is None and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = (
            f"no answer from the controller at {settings.controller}"
            f" within {settings.timeout:g}s (see --timeout)"
        )
    hint = ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = (
            settings.token.origin
            if settings.token.value is None
            else f"the token from {settings.token.origin} was rejected"
        )
    message = status.message if status is not None and status.message else details
    return ApiError(code, message, status, hint)


# ---------------------------------------------------------------------------
# The real transport


def _serialize(request: Message) -> bytes:
    return request.SerializeToString()


class GrpcTransport:
    """A lazily opened insecure channel to the controller."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channel: grpc.Channel | None = None
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            (("authorization", f"Bearer {settings.token.value}"),) if settings.token.value else ()
        )

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.settings.controller)
        return self._channel

    def call(self, method: MethodDescriptor, request: Message) -> Message:
        response_class = message_factory.GetMessageClass(method.output_type)
        rpc: grpc.UnaryUnaryMultiCallable[Message, Message] = self.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=_serialize,
            response_deserializer=response_class.FromString,
        )
        try:
            return rpc(request, metadata=self._metadata, timeout=self.settings.timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.settings) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
