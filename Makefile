# kstap — make help lists the targets. Every target installs what it needs first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libpcap0.8 libpcap-dev tshark tcpdump iproute2 tmux util-linux prometheus chromium fonts-dejavu-core
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 60

.PHONY: help deps system-deps venv demo test unit lint type bench bench-dashboard docs golden sample clean fuzz soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## apt packages: libpcap, tshark, tcpdump/dumpcap, iproute2, tmux
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml setup.py kstap/capture/_ringfast.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f kstap/capture/_ringfast*.so
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'from kstap.capture import afpacket; print("C fast path:", "built" if afpacket.encode_block else "MISSING (pure Python)")'
	touch $@

venv: $(VENV)/.installed ## the project venv with kstap and its dev tools

deps: system-deps venv

demo: deps ## run kstap's main job on its built-in demo network (needs root)
	$(PY) -m kstap demo
	@echo 'kstap is in $(VENV)/bin; for the README quick tour: export PATH="$$PWD/$(VENV)/bin:$$PATH"'

test: deps lint type ## the whole suite: lint, types, unit, CLI, privileged (root) tests
	$(PY) -m pytest $(PYTEST_ARGS)

unit: deps ## only the fast tests (no root needed)
	$(PY) -m pytest tests/unit tests/cli $(PYTEST_ARGS)

lint: venv ## ruff, and the import contract (.importlinter: layers, no cycles)
	$(VENV)/bin/ruff check kstap tests examples benchmarks fuzz
	$(VENV)/bin/lint-imports --no-logo --no-cache

type: venv ## mypy --strict on the package
	$(VENV)/bin/mypy kstap

bench: deps ## kstap vs tcpdump vs dumpcap on veth traffic → docs/benchmarks.md
	$(PY) benchmarks/capture_cpu.py --out docs/benchmarks.md

bench-dashboard: venv ## dashboard CPU at 1 Hz vs none, kstap --help time → docs/benchmarks-dashboard.md
	$(PY) benchmarks/dashboard_cpu.py --out docs/benchmarks-dashboard.md

fuzz: venv ## coverage-guided fuzzing (atheris), FUZZ_SECONDS per target (default 60); not part of test
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

soak: deps ## 10 min of auto then full mode at saturating traffic in a 200 MiB memory cgroup (root)
	$(PY) benchmarks/soak.py --minutes 10 --json soak.json

docs: venv ## regenerate the command reference in docs/cli.md from the Typer app
	$(PY) -m kstap.cli.docgen docs/cli.md

golden: venv ## regenerate the dashboard's golden frames (tests/golden/dashboard/*.txt)
	REGEN_GOLDEN=1 $(PY) -m pytest -q tests/unit/dashboard/test_view.py

sample: deps ## regenerate examples/sample.pcapng from the demo network
	$(PY) examples/make_sample.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
