"""schemathesis against /openapi.json, in-process over ASGI: no input makes the API answer 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from orchestrator.api import create_app
from orchestrator.service import Lethe
from tests.orchestrator.api.conftest import auth

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 30


def test_no_input_makes_a_server_error(lethe: Lethe) -> None:
    """Valid and invalid requests generated for every operation, with an admin token, never get a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(lethe))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14  # with GET /v1/erasure-requests/by-event and …/{id}/report
    known, _ = lethe.submit({"user_id": "12"}, actor="test")  # so that some calls reach a real request
    for operation in operations:
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
        if "{request_id}" in operation.path:
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"request_id": known}))
        cases = st.one_of(strategies)

        @given(case=cases)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=auth("admin"), checks=[not_a_server_error])

        call()
