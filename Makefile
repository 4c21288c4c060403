# k2jobs: `make demo` loads data/sample on a fresh machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# K2_SECURE=1: a stack with TLS, passwords and ACLs everywhere (`stack up --secure`), in a folder of its own.
ifeq ($(K2_SECURE),1)
export K2_STACK_DIR ?= $(CURDIR)/.k2stack-secure
SECURE := --secure
endif
export K2_STACK_DIR ?= $(CURDIR)/.k2stack
# A secure stack's clients read its settings (passwords, CA, rediss:// URL) from client.env.
CLIENT_ENV = if [ -f "$$K2_STACK_DIR/client.env" ]; then set -a; . "$$K2_STACK_DIR/client.env"; set +a; fi;

.PHONY: install system-deps kafka registry s3 demo test test-serial test-cluster test-asan test-unit lint format bench bench-check bench-scale bench-shapes bench-secure bench-task-cost bench-smoke soak up down clean

install: system-deps $(VENV)/.installed kafka registry s3
	@# Bytecode for k2jobs itself (pip compiles every other package it installs, not an editable one): each
	@# process, `submit` included, otherwise compiles ~200 KB of source at start where PYTHONDONTWRITEBYTECODE is set.
	@$(BIN)/python -m compileall -q k2jobs celeryconfig.py >/dev/null

# The real Redis server (Debian's package), a C compiler, and Java 17 + Maven for the Kafka broker.
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@command -v openssl >/dev/null || { \
	  echo "installing openssl (Debian package) for the secure stack's certificates"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssl >/dev/null; }
	@command -v cc >/dev/null || { \
	  echo "installing gcc (Debian package) for k2jobs' compiled row parser"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq gcc >/dev/null; }
	@command -v java >/dev/null || { echo "Java 17+ is required for Kafka (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch Kafka's jars (apt-get install maven)"; exit 1; }

$(VENV)/.installed: pyproject.toml k2jobs/rows/_fastrows.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The 'compat' editable mode puts the source folder on sys.path with a .pth file. The default mode's import
	@# hook costs every process ~70 ms at start-up, every `submit` included (docs/performance-history.md); if a future
	@# setuptools drops 'compat', the default mode is used.
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat 2>/dev/null || $(BIN)/pip install -q -e '.[test]'
	touch $@

# Apache Kafka's own jars from Maven Central, resolved once into ~/.cache/k2jobs.
kafka: $(VENV)/.installed
	$(BIN)/python -c "from k2jobs.config import load_settings; from k2jobs.stack.kafka_nodes import kafka_libs; print('kafka jars:', kafka_libs(load_settings().kafka_libs))"

# VersityGW, an S3-compatible server (Apache-2.0), built once with `go install` into ~/.cache/k2jobs (~1 min).
s3: $(VENV)/.installed
	$(BIN)/python -c "from k2jobs.stack.s3_server import s3_binary; print('s3 server:', s3_binary())"

# Apicurio Registry (a Quarkus app, ~110 MB) from Maven Central, unpacked once into ~/.cache/k2jobs.
registry: $(VENV)/.installed
	$(BIN)/python -c "from k2jobs.stack.registry_app import registry_app; print('schema registry:', registry_app())"

up: install
	$(BIN)/python -m k2jobs stack up --workers $${WORKERS:-2} $$([ "$${K2_SOURCE:-}" = s3 ] && echo --s3) $(SECURE)

down:
	$(BIN)/python -m k2jobs stack down

# K2_FORMAT=avro make demo loads TradeV2/QuoteV2 Avro records instead of JSON values; K2_SECURE=1 on a secure stack.
demo: up
	@echo "make demo loads data/sample again on purpose (--again), as $${K2_FORMAT:-json} (K2_FORMAT=json|avro), from $${K2_SOURCE:-the directory} (K2_SOURCE=s3: from the stack's S3 server)$(if $(SECURE), on the secure stack in $(K2_STACK_DIR))"
	@$(CLIENT_ENV) if [ "$${K2_SOURCE:-}" = s3 ]; then \
	  $(BIN)/python -m k2jobs.stack.s3_server data/sample; \
	else \
	  $(BIN)/python -m k2jobs submit data/sample --again; \
	fi

# `make test` runs the suite in two halves side by side, each on its own test stack (K2_TEST_SLOT 0 and 1: other
# ports, another folder): the fault tests spend most of their time waiting for services to restart or time out.
# The second half's output follows the first's. `make test-serial` runs the whole suite in one process.
TEST_FIRST_HALF = tests/test_cluster.py tests/test_faults.py tests/test_security.py tests/test_watch.py

test: install
	@mkdir -p build; status=0; \
	K2_TEST_SLOT=1 $(BIN)/python -m pytest $(TEST_FIRST_HALF:%=--ignore=%) > build/test-second-half.log 2>&1 & second=$$!; \
	trap 'kill $$second 2>/dev/null' INT TERM; \
	K2_TEST_SLOT=0 $(BIN)/python -m pytest $(TEST_FIRST_HALF) || status=1; \
	wait $$second || status=1; \
	echo "--- second half (K2_TEST_SLOT=1) ---"; cat build/test-second-half.log; \
	exit $$status

test-serial: install
	$(BIN)/python -m pytest

# The long fault tests on a three-broker stack (brokers killed -9 at random moments, a rolling restart).
test-cluster: install
	$(BIN)/python -m pytest -m cluster tests/test_cluster.py

# Two or three overlapping jobs at a time on a three-broker stack, with random kill -9 of workers, brokers and Redis (SOAK_MINUTES, default 10).
soak: install
	$(BIN)/python bench/soak.py --minutes $${SOAK_MINUTES:-10}

# The compiled row parser built with AddressSanitizer + UBSan, on the tests that compare it with the
# Python parser, JSON and Avro (generated, arbitrary and real input); the normal build is put back afterwards.
test-asan: install
	@mkdir -p build
	@set -e; so=$$(ls k2jobs/rows/_fastrows*.so); cp "$$so" build/fastrows.so.orig; \
	trap 'cp build/fastrows.so.orig "'"$$so"'"' EXIT; \
	cc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" k2jobs/rows/_fastrows.c -o "$$so"; \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	LD_PRELOAD="$$(cc -print-file-name=libasan.so) $$(cc -print-file-name=libubsan.so)" \
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fastrows.py tests/test_chunk.py tests/test_avro.py

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not fault"

lint: install
	$(BIN)/ruff check k2jobs tests bench celeryconfig.py
	$(BIN)/ruff format --check k2jobs tests bench celeryconfig.py
	$(BIN)/mypy k2jobs tests/test_protocol.py

format: install
	$(BIN)/ruff format k2jobs tests bench celeryconfig.py
	$(BIN)/ruff check --fix k2jobs tests bench celeryconfig.py

bench: install
	$(BIN)/python bench/bench.py --rows $${ROWS:-1000000}

# The acceptance check of the throughput targets: exits 1 unless all are met (~1M rows, a few minutes).
# Both scripts run whatever the first finds; exit 1 if either misses a target.
bench-check: install
	@status=0; \
	$(BIN)/python bench/bench.py --rows 1000000 --check || status=1; \
	$(BIN)/python bench/shapes.py --check || status=1; \
	exit $$status

# Years of data in one job (bench/scale.py): 8 files, 1 GB, 5 GB, 100,000 and 1,000,000 files, with submit's and the
# first message's times, rows/s, memory, Redis and bytes read; exits 1 unless issue 33's targets are met. It writes
# ~7 GB of input once under bench/.work/scale and drops the page cache before each shape (root); about an hour.
# SHAPES=8files,100k make bench-scale measures some of them.
bench-scale: install
	$(BIN)/python bench/scale.py --check $${SHAPES:+--shapes $$SHAPES}

# Job shapes side by side (big files, thousands of small files, one key in many chunks); a few minutes.
bench-shapes: install
	$(BIN)/python bench/shapes.py

# What security costs: the same loads on a plain stack and on `stack up --secure` (bench/secure.py); a few minutes.
bench-secure: install
	$(BIN)/python bench/secure.py

# The fixed cost of one task (one Kafka transaction), step by step (bench/task_cost.py); a minute.
bench-task-cost: install
	$(BIN)/python bench/task_cost.py

bench-smoke: install
	$(BIN)/python bench/bench.py --smoke

clean: down
	rm -rf $(VENV) .k2stack; find bench/results -maxdepth 1 -type f ! -name '20*.json' -delete 2>/dev/null || true
