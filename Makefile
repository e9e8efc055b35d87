# The README's commands. `make run` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test crash-test fuzz lint protos bench bench-console bench-scale soak bench-tools clean

run: $(INSTALLED)
	$(BIN)/edgekeys serve

test: $(INSTALLED) lint
	$(BIN)/python -m pytest

# 500 SIGKILLs of `edgekeys serve` per store (SQLite, PostgreSQL), with requests in
# flight; `make test` runs 10 of each. Prints a summary per store.
CRASH_ITERATIONS ?= 500
crash-test: $(INSTALLED)
	EDGEKEYS_CRASH_ITERATIONS=$(CRASH_ITERATIONS) $(BIN)/python -m pytest -s -q \
		--timeout 0 tests/e2e/test_crash.py::test_acknowledged_changes_survive_kills_and_nothing_is_half_applied

# The Hypothesis tests of tests/fuzz at length (profile "long"; `make test` runs them
# bounded, profile "ci"), with what each ran.
fuzz: $(INSTALLED)
	$(BIN)/python -m pytest tests/fuzz --hypothesis-profile=long --hypothesis-show-statistics \
		-p no:cacheprovider -v --timeout=3600

# buf breaking compares protos/ with this commit's (the contract before it gained its HTTP
# rules and field behaviours): nothing renamed or renumbered since. Move it on at a release.
PROTO_BASELINE ?= fb26203
lint: $(INSTALLED)
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against '.git#ref=$(PROTO_BASELINE)'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# Benchmarks (not tests): figures as ratios against a baseline measured in the same run.
# bench.replicas and bench-scale need PostgreSQL (EDGEKEYS_TEST_POSTGRES, as the tests).
bench: $(INSTALLED) bench-tools
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.creates
	$(BIN)/python -m bench.audit
	$(BIN)/python -m bench.replicas
	$(BIN)/python -m bench.fold

# The console: the API keys page's server time with 1,000 keys, and ValidateApiKey /
# Health while a headless browser walks the console (Debian's chromium).
bench-console: $(INSTALLED) bench-tools
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(BIN)/python -m bench.console

# 1,000,000 keys in PostgreSQL: a new replica's start and memory, writes at that size.
# Long (45 minutes here), so in neither `make test` nor `make bench`.
bench-scale: $(INSTALLED) bench-tools
	$(BIN)/python -m bench.scale

# Ten minutes of mixed load (95% validations, 5% writes): errors, memory, p99 per minute.
soak: $(INSTALLED) bench-tools
	$(BIN)/python -m bench.soak

bench-tools:
	command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }

# Regenerate the Python stubs in edgekeys/ from protos/; commit the result.
# protos/google is only there for imports: Python uses googleapis-common-protos.
# descriptors.binpb keeps the protos' comments (source info), which the stubs drop:
# /v1/openapi.json takes its descriptions from there.
GENERATED_FROM := $(shell find protos/edgekeys -name '*.proto' | sort)
protos: $(INSTALLED)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
		--include_source_info --descriptor_set_out=edgekeys/v1/descriptors.binpb \
		$(GENERATED_FROM)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
