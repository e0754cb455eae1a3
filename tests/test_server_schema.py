"""schemathesis against /openapi.json: whatever a client sends, no 5xx, and answers match the schema.

In-process on an empty cache (the autouse SLMOPS_HOME): generated model names never
match a model, so nothing generates and the run stays fast, while every route's
parsing, validation and errors are exercised.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from slmops.server import create_app  # noqa: E402

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case):
    case.call_and_validate()
