"""The CLI's error boundary: the one place an exception becomes one line on stderr and a SPEC exit code.

2: a mistake in what was given (input, settings, a data map). 4: the ledger database or the broker cannot be
reached; the line names which, from the settings (passwords hidden), and what to check. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

from orchestrator.cli.common import USER_ERRORS, Exit


def explain(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an operator's or user's error; None for a bug."""
    from kombu.exceptions import OperationalError as BrokerError
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from orchestrator.identities import ResolutionUnavailable
    from orchestrator.service import BrokerUnreachable

    if isinstance(exc, USER_ERRORS):
        return Exit.BAD_INPUT, str(exc)
    if isinstance(exc, ResolutionUnavailable):  # an identity lookup's database: nothing was filed
        return Exit.UNREACHABLE, str(exc)
    if isinstance(exc, ValidationError):  # the settings (Settings reads LETHE_* variables)
        return Exit.BAD_INPUT, "; ".join(_setting_error(e) for e in exc.errors())
    if isinstance(exc, ArgumentError):  # includes NoSuchModuleError (an unknown dialect)
        return Exit.BAD_INPUT, ("LETHE_DATABASE_URL is not a database URL lethe can use: give "
                                "postgresql://user@host:5432/lethe or sqlite:///path/to/lethe.db")
    if (isinstance(exc, DBAPIError) and exc.connection_invalidated) or _is_connect_error(exc):
        reason = _first_line(getattr(exc, "orig", None) or exc)
        return Exit.UNREACHABLE, (f"the ledger database {_database()} cannot be reached ({reason}): check "
                                  "LETHE_DATABASE_URL (host, port, database name, user) and that it is running")
    if isinstance(exc, BrokerUnreachable | BrokerError | RedisConnectionError | RedisTimeout):
        cause = exc.__cause__ or exc
        return Exit.UNREACHABLE, (f"the broker {_broker()} cannot be reached ({_first_line(cause)}): check "
                                  "LETHE_BROKER_URL and that the broker is running")
    return None


def _is_connect_error(exc: BaseException) -> bool:
    """A failure to open a connection to the ledger (refused, unknown host or database, bad credentials),
    not an error of a statement."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    return exc.statement is None or "unable to open database file" in str(exc.orig)


def _setting_error(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    # "LETHE_BROKER_URL is not a broker URL: …", "LETHE_TASK_LEASE_SECONDS: Input should be a valid integer"
    return f"LETHE_{field.upper()}{' ' if message.startswith('is ') else ': '}{message}"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
    return text[:200]


def _database() -> str:
    from sqlalchemy.engine import make_url

    from orchestrator.config import Settings

    try:
        return f"at {make_url(Settings().database_url).render_as_string(hide_password=True)}"
    except Exception:  # the message must not fail on the settings that failed
        return "of LETHE_DATABASE_URL"


def _broker() -> str:
    from kombu.utils.url import maybe_sanitize_url

    from orchestrator.config import Settings

    try:
        return f"at {maybe_sanitize_url(Settings().broker_url or '')}"
    except Exception:
        return "of LETHE_BROKER_URL"
