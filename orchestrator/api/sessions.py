"""The dashboard's session cookie: signed (HMAC-SHA256), HttpOnly, SameSite=Strict.

The cookie carries a random session id, the token's name and role, and an expiry — never the token. Its key
is derived from the token file's contents, so every API host shares it and any change of the file (a token
revoked or rotated) ends every session. CSRF tokens are an HMAC of the session id under the same key.
Signing out records the session id in the ledger (``revoked_sessions``, shared by every API host): a copy of
the cookie stops working at once, not when it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete

from orchestrator.api.auth import Principal, Role
from orchestrator.ledger import Ledger
from orchestrator.ledger.models import RevokedSession

COOKIE = "lethe_session"
MAX_AGE = 8 * 3600


@dataclass(frozen=True)
class Session:
    sid: str
    principal: Principal | None
    expires: int

    @classmethod
    def new(cls, principal: Principal | None = None) -> Session:
        return cls(secrets.token_urlsafe(18), principal, int(time.time()) + MAX_AGE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(session: Session, key: bytes) -> str:
    body: dict[str, object] = {"sid": session.sid, "exp": session.expires}
    if session.principal is not None:
        body |= {"name": session.principal.name, "role": session.principal.role.value}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def decode(value: str | None, key: bytes) -> Session | None:
    """The session a cookie holds, or None if it is absent, forged, malformed or expired."""
    if not value or not key or len(value) > 1024 or "." not in value:
        return None
    payload, _, mac = value.partition(".")
    expected = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        body = json.loads(_unb64(payload))
        expires, sid = int(body["exp"]), str(body["sid"])
        principal = Principal(str(body["name"]), Role(body["role"])) if "name" in body else None
    except (ValueError, KeyError, TypeError):
        return None
    if expires < time.time():
        return None
    return Session(sid, principal, expires)


def csrf_token(session: Session, key: bytes) -> str:
    return _b64(hmac.new(key, b"csrf:" + session.sid.encode(), hashlib.sha256).digest())


def csrf_ok(session: Session | None, key: bytes, sent: str | None) -> bool:
    if session is None or not sent or not key:
        return False
    return hmac.compare_digest(csrf_token(session, key).encode(), sent.encode("utf-8", "replace"))


def revoke(ledger: Ledger, session: Session) -> None:
    """End a session for good (sign-out); revocations of sessions that expired anyway are forgotten."""
    at = datetime.now(UTC)
    with ledger.sessions.begin() as s:
        s.execute(delete(RevokedSession).where(RevokedSession.expires_at < at))
        if s.get(RevokedSession, session.sid) is None:
            s.add(RevokedSession(sid=session.sid, expires_at=datetime.fromtimestamp(session.expires, UTC)))


def revoked(ledger: Ledger, session: Session) -> bool:
    with ledger.sessions() as s:
        return s.get(RevokedSession, session.sid) is not None
