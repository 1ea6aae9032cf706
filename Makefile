# kstap — make help lists the targets. Every target installs what it needs first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libpcap0.8 libpcap-dev tshark tcpdump iproute2 tmux util-linux prometheus chromium fonts-dejavu-core \
	curl knot knot-dnsutils bind9-dnsutils unbound nghttp2-server nghttp2-client
# prometheus: promtool for the rules check; chromium: the report's browser test.
# knot, unbound: real DNS servers, nghttp2: a real HTTP/2 client and server, kdig/nsupdate/curl: real
# clients for the dissection corpus (tests/privileged/test_dissect_corpus.py). Their services are not
# started at install (policy-rc.d): the tests run them in namespaces.
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 60

.PHONY: help deps system-deps venv demo test unit lint type bench bench-auto bench-dissect bench-dashboard docs golden sample clean fuzz soak \
        cluster-deps cluster cluster-down e2e

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## apt packages: libpcap, tshark, tcpdump/dumpcap, iproute2, tmux, DNS/HTTP peers for the corpus
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq; \
	  policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  if [ -n "$$policy" ]; then rm -f $$policy; fi; \
	fi

$(VENV)/.installed: pyproject.toml setup.py kstap/capture/_ringfast.c kstap/_slices.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f kstap/capture/_ringfast*.so kstap/_slices*.so
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'from kstap.capture import afpacket; from kstap import file_writes; print("C fast path:", "built" if afpacket.encode_block and file_writes.write_slices else "MISSING (pure Python)")'
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
	$(VENV)/bin/ruff check kstap tests examples benchmarks fuzz cluster
	$(VENV)/bin/lint-imports --no-logo --no-cache

type: venv ## mypy --strict on the package
	$(VENV)/bin/mypy kstap

bench: deps ## kstap vs tcpdump vs dumpcap on veth traffic → docs/benchmarks.md; then bench-dissect
	$(PY) benchmarks/capture_cpu.py --out docs/benchmarks.md
	$(MAKE) bench-dissect

bench-dissect: deps ## HTTP/1 dissection, kstap vs tshark per CPU-second (root) → docs/benchmarks-dissect.md
	$(PY) benchmarks/dissect_vs_tshark.py --conns 8 --requests 5000 --out docs/benchmarks-dissect.md

bench-auto: deps ## auto mode's value test: whole flows, cost per packet, a CPU quota (tcpdump/full/auto) → docs/benchmarks.md
	nice -n 10 $(PY) benchmarks/auto_value.py --rounds 3 --out docs/benchmarks.md

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

# -- the real Kubernetes cluster of tests/cluster/ (docs/kubernetes.md, "The test cluster"); root, not part of test
CLUSTER_APT_PACKAGES := containerd runc containernetworking-plugins buildah debootstrap etcd-server etcd-client \
                        gcc libc6-dev openssl util-linux iproute2
E2E_ARGS ?=

cluster-deps: system-deps
	@missing=""; for p in $(CLUSTER_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

cluster: cluster-deps venv ## a real local cluster (2 kubelets, containerd, runc, CNI) → .cluster/kubeconfig
	$(PY) cluster/kcluster.py up

cluster-down: ## stop the cluster, remove its processes, namespaces, mounts, cgroups and veths
	python3 cluster/kcluster.py down

e2e: deps ## tests/cluster/ against the running cluster (make cluster first)
	KSTAP_E2E=1 KUBECONFIG=$(CURDIR)/.cluster/kubeconfig $(PY) -m pytest tests/cluster $(E2E_ARGS)

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
