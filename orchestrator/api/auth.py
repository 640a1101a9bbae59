"""API tokens (``LETHE_API_TOKENS``) and what each role may do.

The token file holds ``token role [name]`` per line; blank lines and ``#`` comments are ignored. Tokens are
compared in constant time: every configured token is compared with ``hmac.compare_digest`` on SHA-256
digests (same length whatever was sent), and the loop never stops early, so the time taken says nothing
about which token, or how much of one, matched. The file is read again when it changes (rotate a token
without a restart); a file that became unreadable or malformed refuses every call until it is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from orchestrator.config import ConfigError


class Role(StrEnum):
    REQUESTER = "requester"
    OPERATOR = "operator"
    ADMIN = "admin"


class Action(StrEnum):
    CREATE = "create"
    READ = "read"
    RETRY = "retry"
    CANCEL = "cancel"
    APPROVE = "approve"
    HOLD = "hold"


# SPEC "HTTP API": requester may create and read, operator may read and retry, admin all.
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.REQUESTER: frozenset({Action.CREATE, Action.READ}),
    Role.OPERATOR: frozenset({Action.READ, Action.RETRY}),
    Role.ADMIN: frozenset(Action),
}
MIN_TOKEN_LENGTH = 16
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role. Never the token itself."""

    name: str
    role: Role

    def may(self, action: Action) -> bool:
        return action in PERMISSIONS[self.role]

    def actor(self, channel: str) -> str:
        """The audit trail's actor string, e.g. ``api:alice(requester)``."""
        return f"{channel}:{self.name}({self.role.value})"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(text: str, source: str = "token file") -> list[tuple[bytes, Principal]]:
    """(SHA-256 of the token, principal) per line; ConfigError naming the line (never the token) if bad."""
    entries: list[tuple[bytes, Principal]] = []
    seen: set[bytes] = set()
    names: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {lineno}"
        if len(fields) not in (2, 3):
            raise ConfigError(f"{where}: expected 'token role [name]'")
        token, role_text = fields[0], fields[1]
        name = fields[2] if len(fields) == 3 else f"token-{lineno}"
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{where}: tokens must be at least {MIN_TOKEN_LENGTH} characters "
                              "(e.g. `openssl rand -hex 24`)")
        try:
            role = Role(role_text)
        except ValueError:
            raise ConfigError(f"{where}: role must be one of {', '.join(r.value for r in Role)}") from None
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"{where}: name must be 1-64 of letters, digits and _ . @ + -")
        digest = _digest(token)
        if digest in seen:
            raise ConfigError(f"{where}: the same token appears twice")
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        seen.add(digest)
        names.add(name)
        entries.append((digest, Principal(name, role)))
    return entries


class TokenStore:
    """The principals of a token file, re-read when the file changes."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[bytes, Principal]] = []
        self._secret = b""
        self._error: str | None = None
        if path is not None:
            self._load(strict=True)

    @property
    def configured(self) -> bool:
        return self.path is not None

    def _load(self, strict: bool = False) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            raw = self.path.read_bytes()
            entries = parse_tokens(raw.decode("utf-8"), source=f"LETHE_API_TOKENS ({self.path.name})")
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            message = str(exc) if isinstance(exc, ConfigError) else (
                f"LETHE_API_TOKENS: cannot read {self.path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}")
            if strict:
                raise ConfigError(message) from None
            self._error, self._entries, self._stamp = message, [], None
            return
        self._entries, self._stamp, self._error = entries, stamp, None
        # The dashboard's cookie key: changes whenever the file does, so a revoked token's sessions end.
        self._secret = hmac.new(hashlib.sha256(raw).digest(), b"lethe/dashboard-session/v1", hashlib.sha256).digest()

    def refresh(self) -> None:
        if self.path is not None:
            with self._lock:
                self._load()

    @property
    def error(self) -> str | None:
        """Why every call is refused right now (unreadable or malformed file), or None."""
        return self._error

    @property
    def session_secret(self) -> bytes:
        return self._secret

    def lookup(self, token: str) -> Principal | None:
        """The principal a token belongs to, or None. Constant time in the token sent and the one matched."""
        self.refresh()
        sent = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(sent, digest):  # every entry is compared: no early exit
                found = principal
        return found
