# The two README commands: `make run` (set up everything, start the main job)
# and `make test` (set up everything, run the tests). Both are idempotent.
PY := .venv/bin/python
STAMP := .venv/.qnet-installed

.PHONY: setup run test bench vectors templates lint clean

$(STAMP): pyproject.toml setup.py cext/_fast.pyx tools/bootstrap.sh
	./tools/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job: a whole test network (authorities, relays, exits, mixnodes, a web
# server, the SOCKS proxy on 127.0.0.1:1080) until Ctrl-C.
run: $(STAMP)
	.venv/bin/qnet selftest
	.venv/bin/qnet testnet --mixes 6

# QNET_REQUIRE_EXT: a missing Cython accelerator fails the run instead of skipping.
test: $(STAMP) lint
	QNET_REQUIRE_EXT=1 $(PY) -m pytest -q tests
	.venv/bin/qnet-lint vectors
	$(MAKE) -C bindings/c test

bench: $(STAMP)
	$(PY) bench/sphinx.py
	$(PY) bench/cells.py

vectors: $(STAMP)
	$(PY) -m tools.gen_vectors
	$(PY) -m tools.gen_dir_vectors
	$(PY) -m tools.gen_htx_vectors
	$(PY) -m tools.gen_ticket_vectors
	$(PY) -m tools.gen_inner_vectors
	$(PY) -m tools.gen_circuit_vectors
	$(PY) -m tools.gen_consensus_vectors

# Browser templates (spec/templates/, qnet/htx/templates/) from Debian's chromium,
# which the tool installs with apt-get (saying so) when it is missing and we are root.
templates: $(STAMP)
	$(PY) -m tools.utls_gen

lint: $(STAMP)
	.venv/bin/ruff check qnet tools tests
	.venv/bin/mypy --strict qnet

clean:
	rm -rf build .venv qnet/_fast*.so cext/_fast.c
