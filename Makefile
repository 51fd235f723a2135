# The README's two commands live here: `make demo` (the main job, offline) and `make test`.
# Everything runs from a project-local virtualenv that `setup` creates from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup setup-run demo demo-quick test test-all bench clean

# Two install levels, so `make demo` does not wait for the test references (transformers,
# the server stack, schemathesis, selenium: about a minute of pip on a fresh venv).
# torch is pinned (==2.13.0, a CPU wheel here); transformers is the parity reference.
setup-run: $(VENV)/.installed-run
setup: $(VENV)/.installed

$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[plot]'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run

# Tokenize the offline demo corpus, pretrain, run the control arm and the anneal x2 seeds,
# soup, evaluate on the held-out test split with 95% intervals, report, print generations,
# and leave an HF checkpoint that `olmo2 chat` loads. Budget: < 10 min on any 2-core CPU.
demo: setup-run
	$(VENV)/bin/olmo2 replicate --recipe tiny

demo-quick: setup-run
	$(VENV)/bin/olmo2 replicate --recipe tiny --quick

# The suite CI runs (.ci/run calls exactly this; -rs lists every skip, and with CI=true a test
# that skips for want of a registry package fails: tests/ci_strict.py). Slow tests: `make test-all`.
test: setup
	$(PY) -m pytest -q -rs

test-all: setup
	$(PY) -m pytest -q -rs -m ''

bench: setup
	$(PY) benchmarks/cpu_decode.py
	$(PY) benchmarks/cpu_train.py

clean:
	rm -rf $(VENV) runs
