"""Who is calling: bearer tokens mapped to a project and roles."""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from controller.errors import PermissionDenied, Unauthenticated

ROLES = frozenset({"admin", "member", "agent"})
ADMIN_PROJECT = "admin"


@dataclass(frozen=True, slots=True)
class Context:
    project_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_agent(self) -> bool:
        return "agent" in self.roles or self.is_admin

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise PermissionDenied(f"{what} is restricted to admins", reason="PolicyNotAuthorized")

    @classmethod
    def admin(cls) -> Context:
        return cls(ADMIN_PROJECT, frozenset({"admin"}))


class TokenTable:
    def __init__(self, tokens: dict[str, Context]) -> None:
        self._tokens = tokens

    def authenticate(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Context:
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
                break
        if not header:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        ctx = self._tokens.get(token.strip())
        if ctx is None:
            raise Unauthenticated("invalid token")
        return ctx

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        tokens: dict[str, Context] = {}
        for i, entry in enumerate(data.get("tokens", [])):
            token, project = entry.get("token"), entry.get("project_id")
            roles = frozenset(entry.get("roles", ["member"]))
            if not token or not project:
                raise ValueError(f"{path}: tokens[{i}] needs token and project_id")
            if not roles <= ROLES:
                raise ValueError(f"{path}: tokens[{i}] has unknown roles {sorted(roles - ROLES)}")
            tokens[token] = Context(project, roles)
        return cls(tokens)

    @classmethod
    def generated_admin(cls, state_dir: Path) -> tuple[TokenTable, Path]:
        """No tokens file: one admin token, kept in the state dir for the CLI to find."""
        path = state_dir / "admin-token"
        if path.exists():
            token = path.read_text().strip()
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            token = secrets.token_urlsafe(24)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        return cls({token: Context.admin()}), path
