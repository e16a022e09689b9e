"""Schemathesis against the gateway's own OpenAPI schema: no generated request gets a 5xx.

Valid and invalid requests (positive and negative generation modes) for every operation, with
a valid bearer token, on a gateway whose answers are capped at 4 tokens so valid requests that
reach the swarm stay quick. Bounded: a fixed number of examples per operation and mode.
"""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

pytestmark = pytest.mark.swarm

EXAMPLES = 12
# Parameters the gateway refuses by name; left out of valid requests so some reach the swarm.
REFUSED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "n",
    "seed",
)


@pytest.fixture(scope="module")
def fuzz_gateway(gateway_factory):
    return gateway_factory(max_new_tokens_limit=4, default_max_new_tokens=4, max_prompt_chars=2000)


def test_no_request_from_the_schema_gets_a_server_error(fuzz_gateway, token):
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    served = httpx.get(fuzz_gateway.url + "/v1/models", headers=headers).json()["data"][0]["id"]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/api/v1/generate",
    }
    failures: list[str] = []
    refusals: list[str] = []
    seen: dict[str, int] = {}
    started = time.monotonic()

    def fuzz(operation, mode) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode, headers=headers))
        def exercise(case):
            if (
                mode is GenerationMode.POSITIVE
                and isinstance(case.body, dict)
                and "model" in case.body
            ):
                case.body["model"] = served  # else almost every valid request is a 404
                for name in REFUSED:  # documented 400s (test_gateway_conformance.py)
                    case.body.pop(name, None)
                for message in case.body.get("messages") or []:
                    if isinstance(message, dict) and message.get("role") in ("tool", "function"):
                        message["role"] = "user"  # tool turns are refused by name, too
            response = case.call(base_url=fuzz_gateway.url, timeout=60)
            key = f"{operation.method.upper()} {operation.path} {response.status_code}"
            seen[key] = seen.get(key, 0) + 1
            if mode is GenerationMode.POSITIVE and response.status_code == 400:
                refusals.append(f"{key}: {response.text[:200]}")
            if response.status_code >= 500:
                failures.append(f"{key}: {case.body!r} -> {response.text[:300]}")

        try:
            exercise()
        except Unsatisfiable:
            # an operation without parameters or body has no invalid form to generate
            if mode is GenerationMode.POSITIVE:
                raise

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    elapsed = time.monotonic() - started
    print(f"fuzzed {sum(seen.values())} requests in {elapsed:.0f} s: {sorted(seen.items())}")
    assert not failures, "\n".join(failures)
    # the fuzzing reached the swarm (some 200s) and the validation (some 400s)
    assert any(k.startswith("POST /v1/chat/completions 200") for k in seen), (seen, refusals)
    assert any(k.endswith(" 400") for k in seen), seen
    assert elapsed < 240, f"the fuzzing took {elapsed:.0f} s"
