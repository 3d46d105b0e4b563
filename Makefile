# The front door: `make demo` and `make test` are all a fresh machine with Python needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Where the installed extras are recorded, so each target installs only once.
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: help install demo test test-fast test-floors lint docs release-check format bench bench-quick bench-checkpoint loadtest loadtest-http clean

help:
	@echo "make demo      LangChain's Redis examples, as a chain and a 1.x agent (REDIS_URL, or a throwaway server)"
	@echo "make test      the whole test suite on Redis 7, Redis 8, Valkey 8 and a Redis Cluster"
	@echo "make test-wheels-only   the suite with Debian's Redis hidden: the wheels' servers only"
	@echo "make lint      ruff, mypy --strict, luac -p"
	@echo "make docs      the documentation site (docs/, mkdocs.yml) into site/, strict"
	@echo "make release-check  build the sdist and the wheel, check them, install the wheel"
	@echo "               alone in a fresh virtualenv and run the quick start from it"
	@echo "make test-floors  a real round trip on the lowest and the newest redis-py and langchain-core"
	@echo "make bench     side-by-side benchmarks on every server kind into docs/bench/"
	@echo "make bench-checkpoint  the LangGraph saver beside other savers, into docs/checkpoint/"
	@echo "make loadtest  headless locust runs, every contender side by side, into loadtest/results/"
	@echo "make loadtest-http  a FastAPI chat service under locust, every history backend and"
	@echo "               Redis faults, into docs/loadtest-http/ (LOADTEST_HTTP_ARGS=--quick: a check)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[hiredis,fast,server,agents]"
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[hiredis,fast,server,agents,test,bench,dev,checkpoint,docs,examples]"
	touch $@ $(DEMO_STAMP)

install: $(DEV_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m pyhistory.demo

test: $(DEV_STAMP)
	$(PY) -m pytest

test-fast: $(DEV_STAMP)
	PYHISTORY_TEST_SERVERS=redis $(PY) -m pytest -x -q

# The lowest redis and langchain-core that pyproject allows on the oldest Python, and the newest
# of each on the newest Python: fresh environments in .venv-floors/, a real round trip in each.
test-floors: $(DEMO_STAMP)
	$(PY) tests/floors/run.py

# As on a machine with Python only: no redis-server or redis-cli on PATH (tests/hide-redis.sh).
.PHONY: test-wheels-only
test-wheels-only: $(DEV_STAMP)
	tests/hide-redis.sh $(MAKE) test

PY_SOURCES := pyhistory tests loadtest examples

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	@if command -v luac >/dev/null 2>&1; then luac -p lua/*.lua && echo "luac -p: ok"; fi

# Strict: a broken link, a missing page or an API reference that does not resolve fails.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The sdist and the wheel as an index would get them (no build isolation: the backend is in
# .venv, so no download), their metadata checked, the wheel installed with no extras into a fresh
# virtualenv, and the README's quick start run from there against a throwaway server.
release-check: $(DEV_STAMP)
	$(PY) tests/release/check.py

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix $(PY_SOURCES)
	$(BIN)/ruff format $(PY_SOURCES)

bench: $(DEV_STAMP)
	$(PY) loadtest/bench

bench-quick: $(DEV_STAMP)
	$(PY) loadtest/bench --quick --out /tmp/pyhistory-bench

LOADTEST_ARGS ?= --compare --users 20 --run-time 60s
loadtest: $(DEV_STAMP)
	$(PY) loadtest/run.py $(LOADTEST_ARGS)

LOADTEST_HTTP_ARGS ?=
loadtest-http: $(DEV_STAMP)
	$(PY) loadtest/httpchat/run.py $(LOADTEST_HTTP_ARGS)

clean:
	rm -rf $(VENV) .venv-floors .venv-release build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The LangGraph checkpointer, side by side with other savers: tables and plots in docs/checkpoint/.
bench-checkpoint: $(DEV_STAMP)
	$(PY) -m pip install -q langgraph-checkpoint-plainredis langgraph-checkpoint-aws || echo "peers not installed: benchmarked without them"
	$(PY) loadtest/checkpoint/bench.py
