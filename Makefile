# The README's two commands: `make demo` and `make test`. Both build .venv from scratch when it
# is missing, so nothing depends on what happens to be installed on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mh-watchd demo

lint: $(STAMP)
	$(BIN)/ruff format --check mh_watchd tests bench
	$(BIN)/ruff check mh_watchd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
pytest: $(STAMP)
	@$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# The long chaos pass: every tests/chaos scenario marked chaos_long, at MH_CHAOS_PASS=long (more
# files, more kill points, several seeds). The scenarios add their totals to a results file (a new
# one per run under /tmp, or $CHAOS_RESULTS); the summary line fails the target when any file was
# paid for twice or lost.
.PHONY: chaos
chaos: $(STAMP)
	@results=$${CHAOS_RESULTS:-$$(mktemp /tmp/mh-watchd-chaos.XXXXXX)}; rm -f "$$results"; \
	MH_CHAOS_PASS=long MH_CHAOS_RESULTS="$$results" $(BIN)/pytest -q -p no:cacheprovider \
		-m chaos_long --timeout 1800 tests/chaos; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no chaos tests: failing" >&2; rc=1; fi; \
	$(BIN)/python -c 'import json, os, sys; \
	keys = ("files", "kills", "faults", "create_requests", "duplicates", "lost"); \
	d = json.load(open(sys.argv[1])) if os.path.exists(sys.argv[1]) else {"scenarios": []}; \
	t = d.get("totals", dict.fromkeys(keys, 0)); \
	print("chaos summary (%d scenarios, results in %s): files %d, kills %d, faults injected %d, create requests %d, duplicates %d (must be 0), lost %d (must be 0)" % (len(d["scenarios"]), sys.argv[1], t["files"], t["kills"], t["faults"], t["create_requests"], t["duplicates"], t["lost"])); \
	sys.exit(1 if t["duplicates"] or t["lost"] else 0)' "$$results" || rc=1; \
	exit $$rc

# The container image (Containerfile), with podman or docker, whichever is installed (podman
# first; ENGINE= picks one). BASE= the base image, IMAGE= the tag. WHEELS=prebuilt makes the
# wheels here with the venv's pip and builds from them alone, for a build without network (the
# base's Python must then match this venv's). podman builds in docker format: OCI images have
# no HEALTHCHECK.
IMAGE ?= localhost/mh-watchd:latest
BASE ?= python:3.12-slim
WHEELS ?= build
ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
.PHONY: image
image:
	@test -n "$(ENGINE)" || { echo "make image: neither podman nor docker is installed" >&2; exit 69; }
	@if [ "$(WHEELS)" = prebuilt ]; then \
		$(MAKE) --no-print-directory $(STAMP) && rm -f container/wheels/*.whl && \
		$(BIN)/python -m pip wheel --quiet --wheel-dir container/wheels '.[postgresql]' tzdata || exit 1; \
	fi
	$(ENGINE) build $(if $(findstring podman,$(notdir $(ENGINE))),--format docker) \
		--build-arg BASE=$(BASE) --build-arg WHEELS=$(WHEELS) \
		--build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1) \
		-f Containerfile -t $(IMAGE) .
