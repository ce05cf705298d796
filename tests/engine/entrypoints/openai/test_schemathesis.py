"""Schemathesis fuzzes every operation of a real `fleetlm serve` process: whatever the
request, the server answers without a 5xx or a hang, and every error it answers has the
documented OpenAI shape.

The schema is built from `create_app` at collection time (the lazy `from_fixture` loader of
schemathesis 4 fails on pytest 9), and a test checks that the running server serves that same
schema. The server's limits keep generated requests cheap: at most 2 samples and 8 tokens
each, so a request asking for more gets a 400 instead of running for minutes on CPU.
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from fleetlm.engine.config import EngineArgs
from fleetlm.engine.entrypoints.openai.api_server import create_app
from fleetlm.engine.entrypoints.openai.settings import ServerSettings

from .server_process import ServerProcess

pytestmark = pytest.mark.slow

OPENAPI = create_app(ServerSettings(), EngineArgs()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def server(smollm2_dir):
    with ServerProcess(smollm2_dir, "--max-n", "2", "--max-tokens-limit", "8") as process:
        yield process


def test_the_server_serves_the_fuzzed_schema(server):
    assert httpx.get(f"{server.url}/openapi.json").json() == OPENAPI
    completions = OPENAPI["paths"]["/v1/completions"]["post"]
    assert completions["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CompletionRequest"
    }
    # Errors are documented as they are sent: the OpenAI shape, never FastAPI's 422.
    assert set(completions["responses"]) == {"200", "4XX", "5XX"}


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, server):
    case.call_and_validate(
        base_url=server.url, checks=[not_a_server_error, response_schema_conformance], timeout=30
    )
