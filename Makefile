# The two commands of the quick start: `make run` and `make test`.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTANCE := dev

.PHONY: run test lint fuzz bench bench-store bench-cluster cluster-trials soak clean

$(VENV)/installed: pyproject.toml setup.cfg
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,cluster]'
	touch $@

# sslyze, the external TLS scanner of tests/test_tls_scan.py, pins an older
# cryptography than secmsg's, so it lives in a virtualenv of its own.
SCAN_VENV := .venv-scan
SSLYZE_VERSION := 6.3.1

$(SCAN_VENV)/installed:
	python3 -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet 'sslyze==$(SSLYZE_VERSION)'
	touch $@

# Mosquitto, the daemon the benchmarks measure secmsg against, from Debian's
# packages; the benchmark's smoke test runs it too.
MOSQUITTO := /usr/sbin/mosquitto
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(MOSQUITTO):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto

# systemd-socket-activate, which hands the daemon a listening socket as
# systemd does, for tests/test_deployment.py's socket activation test.
SOCKET_ACTIVATE := /usr/bin/systemd-socket-activate

$(SOCKET_ACTIVATE):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd

# PostgreSQL and Redis, the store and the bus of the cluster's tests
# (tests/servers.py runs them), from Debian's packages; no test uses the
# services the packages may start.  Debian keeps PostgreSQL's programs off
# PATH in /usr/lib/postgresql/<major>/bin: the target is whichever major is
# there, so that no version is written here (none yet: a name no file has).
POSTGRES := $(or $(lastword $(wildcard /usr/lib/postgresql/*/bin/postgres)),postgresql-server)
REDIS := /usr/bin/redis-server

$(POSTGRES):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

$(REDIS):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

# matplotlib draws the benchmark's plot; nothing else needs it.
$(VENV)/bench-installed: $(VENV)/installed
	$(PYTHON) -m pip install --quiet -e '.[test,bench]'
	touch $@

# The ports of the instance: written into a new one's secmsg.toml by
# secmsg init, and given to the daemon when set.
PORT :=
ADMIN_PORT :=
PORT_FLAGS := $(if $(PORT),--port $(PORT)) $(if $(ADMIN_PORT),--admin-port $(ADMIN_PORT))

$(INSTANCE)/secmsg.toml: | $(VENV)/installed
	$(VENV)/bin/secmsg init $(INSTANCE) $(PORT_FLAGS)

## Set up, make a development instance if there is none, and run the daemon;
## FLAGS="--idle-timeout 60" passes options to it.  A second daemon beside
## the first needs an instance and ports of its own:
## make run INSTANCE=dev2 PORT=7501 ADMIN_PORT=7446 (the ports are kept in
## dev2/secmsg.toml, so later runs need only INSTANCE=dev2).
run: $(VENV)/installed $(INSTANCE)/secmsg.toml
	$(VENV)/bin/twistd --nodaemon --pidfile $(INSTANCE)/secmsg.pid secmsg --config $(INSTANCE)/secmsg.toml $(PORT_FLAGS) $(FLAGS)

## Set up with the test and cluster extras (and sslyze for the TLS scan,
## PostgreSQL and Redis for the cluster's tests), check the code
## with ruff and mypy, run the whole suite under pytest and again under trial, since
## both must find and pass it.
test: $(VENV)/installed $(SCAN_VENV)/installed $(MOSQUITTO) $(SOCKET_ACTIVATE) \
		$(POSTGRES) $(REDIS) lint
	$(PYTHON) -m pytest -q
	$(PYTHON) -m twisted.trial tests

lint: $(VENV)/installed
	$(VENV)/bin/ruff check secmsg twisted tests bench
	$(VENV)/bin/ruff format --check secmsg twisted tests bench
	$(VENV)/bin/mypy

## Fuzz each target (docs/fuzzing.md) with atheris for FUZZ_SECONDS
## seconds, from its seed corpus in tests/fuzz/corpus/ and what earlier
## runs found in .fuzz/corpus/; TARGET=wire fuzzes one.  An input that
## breaks a property goes to .fuzz/crashes/ (git ignores .fuzz/).
FUZZ_SECONDS := 60
FUZZ_TARGETS := wire policy settings identity trust display
TARGET :=
FUZZ_CRASHES := .fuzz/crashes

fuzz: $(VENV)/installed
	@mkdir -p $(FUZZ_CRASHES)
	@status=0; for target in $(or $(TARGET),$(FUZZ_TARGETS)); do \
		mkdir -p .fuzz/corpus/$$target; \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		$(PYTHON) -m tests.fuzz.run $$target -max_total_time=$(FUZZ_SECONDS) \
			-timeout=10 -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_CRASHES)/$$target- \
			.fuzz/corpus/$$target tests/fuzz/corpus/$$target || status=1; \
	done; \
	if [ $$status != 0 ]; then \
		echo "a property broke: the input is in $(FUZZ_CRASHES)/;" \
			"copy it to tests/fuzz/corpus/<target>/ to keep it as a test"; \
	fi; exit $$status

# Another checkout whose daemon the benchmark runs beside this one's.
COMPARE :=

## Measure secmsg beside Mosquitto (about nine minutes), then the cluster
## (bench-cluster, about a minute more); the figures go to
## docs/benchmarks.md, docs/benchmarks.json, docs/cluster.json and the plot
## in docs/. COMPARE=../before also runs the daemon of that checkout (a
## worktree of an older commit) beside this one's, in every scenario.
bench: $(VENV)/bench-installed $(MOSQUITTO) $(POSTGRES) $(REDIS)
	$(PYTHON) -m bench.run --json docs/benchmarks.json \
		--markdown docs/benchmarks.md --plot docs/bench-latency.png \
		$(if $(COMPARE),--compare $(COMPARE))
	$(PYTHON) -m bench.cluster --json docs/cluster.json --markdown docs/benchmarks.md

## The message store alone, with and without group commit.
bench-store: $(VENV)/installed
	$(PYTHON) bench/store_throughput.py

## The cluster (docs/cluster.md) on a PostgreSQL and a Redis it starts on
## loopback: one node and two at saturation, 2,000 messages a second across
## nodes, and OFFLINE after a kill -9 (about a minute); its figures go to
## their own section of docs/benchmarks.md and to docs/cluster.json.
bench-cluster: $(VENV)/installed $(POSTGRES) $(REDIS)
	$(PYTHON) -m bench.cluster --json docs/cluster.json --markdown docs/benchmarks.md

# How many trials of each fault make cluster-trials runs.
TRIALS_KILL ?= 20
TRIALS_REDIS ?= 5
TRIALS_POSTGRES ?= 5

## The cluster's faults mid-stream, each trial on two daemons: kill -9 of
## one, a Redis restart, a PostgreSQL restart; fails if a message confirmed
## with 250 never reached its recipient.
cluster-trials: $(VENV)/installed $(POSTGRES) $(REDIS)
	$(PYTHON) -m bench.cluster_trials --kills $(TRIALS_KILL) \
		--redis $(TRIALS_REDIS) --postgres $(TRIALS_POSTGRES)

# The soak's size: sessions held, and seconds of traffic after they are in.
SOAK_SESSIONS ?= 10000
SOAK_SECONDS ?= 600

## The soak (about ten minutes, loopback only, stops by itself): 10,000
## sessions held on the daemon while messages and room traffic flow, with
## reconnect storms, a RELOAD every 30 s and a kill -9 and restart every
## 200 s; its figures go to docs/benchmarks.md and docs/soak-memory.png.
## It fails if a confirmed message was lost or a session not held.
soak: $(VENV)/bench-installed
	$(PYTHON) -m bench.soak --sessions $(SOAK_SESSIONS) --seconds $(SOAK_SECONDS) \
		--json docs/soak.json --markdown docs/benchmarks.md --plot docs/soak-memory.png

## The admin interface against docs/openapi.json at length: schemathesis
## with API_EXAMPLES cases an operation (make test runs 25), as an admin, a
## guest, an identity past its rate and a client without a certificate.
API_EXAMPLES := 1000

.PHONY: fuzz-api fuzz
fuzz-api: $(VENV)/installed
	API_EXAMPLES=$(API_EXAMPLES) $(PYTHON) -m pytest -q tests/test_admin_contract.py

fuzz: fuzz-api

clean:
	rm -rf $(VENV) $(SCAN_VENV) *.egg-info build _trial_temp .hypothesis .fuzz
