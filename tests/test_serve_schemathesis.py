"""Schemathesis against olmo2 serve's /openapi.json (slow): generated requests, valid and
invalid, to every route must never get a 5xx; small max_tokens keep generation short."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("schemathesis.pytest")
hypothesis = pytest.importorskip("hypothesis")

from olmo2.serve.app import ServeConfig, create_app
from olmo2.serve.engine import EngineConfig
from serve_fixtures import serve_ckpt  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(serve_ckpt):
    # Built lazily (a fixture, not at import): collecting the suite must not load a model.
    app = create_app(ServeConfig(model=str(serve_ckpt), default_max_tokens=4, engine=EngineConfig(max_batch=4)),
                     load_in_background=False)   # default_max_tokens small: generated bodies often omit it
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_server_errors(case):
    from schemathesis.checks import not_a_server_error
    if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
        case.body["max_tokens"] = min(max(case.body["max_tokens"], 1), 8)   # bound generation time
    case.call_and_validate(checks=[not_a_server_error])
