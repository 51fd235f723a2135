"""Schemathesis against olmo2 serve's /openapi.json (slow): generated requests, valid and
invalid, to every route must never get a 5xx; small max_tokens keep generation short."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from olmo2.serve.app import ServeConfig, create_app
from olmo2.serve.engine import EngineConfig
from serve_fixtures import serve_ckpt  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_no_server_errors(serve_ckpt):
    # The schema is built inside the test, not at import, so collecting the suite loads no
    # model; schemathesis' pytest fixture integration breaks on pytest 9 ('_nodeid'), so the
    # operations' strategies are driven with hypothesis directly.
    from schemathesis.checks import not_a_server_error
    app = create_app(ServeConfig(model=str(serve_ckpt), default_max_tokens=4, engine=EngineConfig(max_batch=4)),
                     load_in_background=False)   # default_max_tokens small: generated bodies often omit it
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 8, [op.label for op in ops]
    calls = []

    for op in ops:
        @hypothesis.given(case=op.as_strategy())
        @hypothesis.settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case):
            if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
                case.body["max_tokens"] = min(max(case.body["max_tokens"], 1), 8)   # bound generation time
            case.call_and_validate(checks=[not_a_server_error])
            calls.append(op.label)
        check()
    assert set(calls) == {op.label for op in ops}   # every route was really called
