"""The CLI's parsers of outside input and its error boundary, as units: any text as a request id or a URL
setting is taken or refused cleanly, each error kind maps to its SPEC exit code, and progress without a
terminal is printed as lines."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rich.console import Console

from orchestrator.cli.common import Exit, LineProgress
from orchestrator.cli.errors import explain
from orchestrator.config import ConfigError, Settings
from orchestrator.datamap import DataMap
from orchestrator.ledger import Ledger, LedgerError, UnknownRequest
from tests.fixtures.lethe import file_request

IDS = ["aaaa1111-0000-4000-8000-000000000001", "aaaa1111-0000-4000-8000-000000000002",
       "bbbb3333-0000-4000-8000-000000000004"]
MAP = """
version: 1
identifiers: [user_id]
targets:
  - {name: photos, kind: memory, store: photos, match: {owner: "{user_id}"}}
"""


@pytest.fixture
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory, subject_key: bytes, signing_key: object,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    path = tmp_path_factory.mktemp("ids") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", subject_key, signing_key)  # type: ignore[arg-type]
    given_ids = iter(IDS)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(next(given_ids)))
    datamap = DataMap.parse(MAP)
    for n in range(len(IDS)):
        file_request(ledger, datamap, datamap.parse_subject({"user_id": str(n)}))
    monkeypatch.undo()
    yield ledger
    ledger.engine.dispose()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), st.text("0123456789abcdefABCDEF-%_'", max_size=40),
                      st.sampled_from(IDS).map(lambda rid: rid[:8])))
def test_any_text_names_one_request_or_is_refused(sqlite_ledger: Ledger, text: str) -> None:
    """A request id as typed: the one request it is a prefix of, or UnknownRequest / an ambiguity error;
    never a pattern match (%, _), never another exception."""
    try:
        found = sqlite_ledger.resolve_request_id(text)
    except LedgerError:  # UnknownRequest, or ambiguous
        return
    assert found in IDS and found.startswith(text.strip().lower()) and len(text.strip()) >= 4


@settings(max_examples=300, deadline=None)
@given(url=st.one_of(st.text(max_size=60), st.sampled_from(["redis://", "rediss://", "amqp://", "memory://",
                                                             "http://", "redis//"]).map(lambda s: s + "h:1/0")))
def test_any_broker_url_is_taken_or_refused_as_a_setting(url: str) -> None:
    try:
        taken = Settings(broker_url=url, database_url="sqlite:///x.db").broker_url
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == ("broker_url",)
        assert explain(exc) == (Exit.BAD_INPUT, f"LETHE_BROKER_URL {exc.errors()[0]['msg'][len('Value error, '):]}")
        return
    assert taken is None if not url else "://" in taken


@settings(max_examples=300, deadline=None)
@given(url=st.one_of(st.text(max_size=60), st.sampled_from(["sqlite:///", "postgresql://", "postgres://",
                                                             "nosuch://", "sqlite//"]).map(lambda s: s + "a/b")))
def test_any_database_url_is_taken_or_refused_as_a_setting(url: str) -> None:
    try:
        Settings(database_url=url)
    except ValidationError as exc:
        code, message = explain(exc)  # type: ignore[misc]
        assert code == Exit.BAD_INPUT and message.startswith("LETHE_DATABASE_URL ")


def test_each_error_kind_maps_to_its_exit_code() -> None:
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    assert explain(UnknownRequest("no request with id 'x'")) == (Exit.BAD_INPUT, "no request with id 'x'")
    assert explain(ConfigError("LETHE_SUBJECT_KEY must be hex")) == (Exit.BAD_INPUT, "LETHE_SUBJECT_KEY must be hex")
    broker = explain(BrokerError("Error 111 connecting to 127.0.0.1:1. Connection refused."))
    assert broker is not None and broker[0] == Exit.UNREACHABLE and "broker" in broker[1]
    with pytest.raises(OperationalError) as refused:
        create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none").connect()
    database = explain(refused.value)
    assert database is not None and database[0] == Exit.UNREACHABLE and "ledger database" in database[1]
    with pytest.raises(OperationalError) as statement:  # a statement's error is a bug, not an outage
        create_engine("sqlite://").connect().execute(text("SELECT * FROM no_such_table"))
    assert explain(statement.value) is None
    assert explain(RuntimeError("a bug")) is None


def test_progress_without_a_terminal_is_one_line_per_period() -> None:
    buffer = io.StringIO()
    with LineProgress(Console(file=buffer, width=200), every=0) as progress:
        filed = progress.add_task("filed", total=3)
        for n in (1, 2, 3):
            progress.update(filed, completed=n)
    lines = buffer.getvalue().splitlines()
    assert [line.rsplit(" · ", 1)[0] for line in lines] == ["filed 1/3", "filed 2/3", "filed 3/3", "filed 3/3"]
    quiet = io.StringIO()
    with LineProgress(Console(file=quiet, width=200), every=3600) as progress:
        progress.update(progress.add_task("filed", total=2), completed=2)
    assert quiet.getvalue().splitlines() == ["filed 2/2 · 0 s"]  # only the end
