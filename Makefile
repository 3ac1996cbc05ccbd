# Two commands do all the set-up: `make run` (the main job) and `make test` (the checks CI runs).
# Each prepares the project's own environment in .venv first (scripts/ensure_venv.py: reused as
# long as pyproject.toml is unchanged) and is safe to run again. `make help` lists every target.
# Settings change on the command line only (`make run PRESET=tiny`): a variable of the same name
# in the shell's environment (PORT, MODEL, ...) does not reach them.

PYTHON := python3
VENV := .venv
ISOLATED := 0
VERBOSE := 0
PRESET := mnist-cpu
MODEL :=
RUN_NAME :=
OUTPUT_ROOT := runs
ARGS :=
PYTEST_ARGS :=
PORT := 4200
DOCS_PORT := 8000
LOCAL_DEPLOY := .deploy-local

VPY := $(abspath $(VENV))/bin/python
# One run directory per preset and model, so `make run` again resumes or reports that run.
RUN := $(or $(RUN_NAME),$(PRESET)$(if $(MODEL),-$(MODEL)))
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv run test test-system ci check docs system-deps deploy-local deploy-stop clean-venv

help: ## list the targets and their settings
	@echo "usage: make <target> [SETTING=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "settings: PRESET=$(PRESET) MODEL=$(or $(MODEL),<the preset's>) OUTPUT_ROOT=$(OUTPUT_ROOT)"
	@echo "  RUN_NAME=$(RUN) (the run make run resumes; another name starts another run)"
	@echo "  ARGS='...' more flags for the job (python -m flows.train_and_sample --help)"
	@echo "  PYTEST_ARGS='...' for pytest, e.g. PYTEST_ARGS='-k sampler -n 0'"
	@echo "  PYTHON=$(PYTHON) makes $(VENV); ISOLATED=1 hides the packages it already has;"
	@echo "  VERBOSE=1 shows pip's output; PORT=$(PORT) for deploy-local, DOCS_PORT=$(DOCS_PORT) for docs"

venv: ## create or refresh .venv (reused while pyproject.toml is unchanged)
	@$(PYTHON) scripts/ensure_venv.py --venv "$(VENV)" \
		$(if $(filter 1,$(ISOLATED)),--isolated) $(if $(filter 1,$(VERBOSE)),--verbose)

run: venv ## the main job: PRESET (mnist-cpu), MODEL (edm|ddpm|ncsn|sde-vp|sde-ve; the preset's), RUN_NAME, OUTPUT_ROOT, ARGS
	$(VPY) -m flows.train_and_sample --preset $(PRESET) $(if $(MODEL),--model $(MODEL)) \
		--output-root $(OUTPUT_ROOT) --run-name $(RUN) $(ARGS)

test: venv ## ruff and the default tests, CI's first stage (PYTEST_ARGS for a selection)
	@$(MAKE) --no-print-directory check

test-system: venv system-deps ## the system tests, CI's second stage: fresh clone, README deploy, kill storm
	$(VPY) -m pytest -m system $(PYTEST_ARGS)

ci: ## what CI runs (.ci/run): make test, then make test-system
	@$(MAKE) --no-print-directory test
	@$(MAKE) --no-print-directory test-system

check: ## ruff and pytest in .venv, without preparing anything first
	$(VPY) -m ruff check .
	$(VPY) -m pytest $(PYTEST_ARGS)

docs: venv ## the documentation site at http://127.0.0.1:8000 (DOCS_PORT), rebuilt as pages change
	NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

system-deps: ## Debian's chromium for the browser test: installed when root, else a note
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing Debian's chromium (the browser check of the Prefect UI)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "==> chromium is missing: the browser check of the Prefect UI will be skipped"; \
		echo "    (install it with: sudo apt-get install -y chromium; with CI set the check fails)"; \
	fi

deploy-local: venv ## the README's local Deploy path in the background: server, pool, deployments, worker
	@mkdir -p $(LOCAL_DEPLOY)
	@set -e; \
	export PREFECT_API_URL=http://127.0.0.1:$(PORT)/api PREFECT_SERVER_API_PORT=$(PORT) \
		PREFECT_SERVER_ANALYTICS_ENABLED=false; \
	for what in server worker; do \
		if [ -f $(LOCAL_DEPLOY)/$$what.pid ] && kill -0 "$$(cat $(LOCAL_DEPLOY)/$$what.pid)" 2>/dev/null; then \
			echo "==> a $$what from an earlier deploy-local is running (pid $$(cat $(LOCAL_DEPLOY)/$$what.pid)): make deploy-stop first"; \
			exit 1; \
		fi; \
	done; \
	echo "==> Prefect server on port $(PORT) (log $(LOCAL_DEPLOY)/server.log)"; \
	setsid nohup prefect server start --port $(PORT) > $(LOCAL_DEPLOY)/server.log 2>&1 & \
	echo $$! > $(LOCAL_DEPLOY)/server.pid; \
	prefect server status --wait --timeout 120 > /dev/null \
		|| { tail -n 40 $(LOCAL_DEPLOY)/server.log; exit 1; }; \
	echo "==> work pool diffusion-process"; \
	prefect work-pool create diffusion-process --type process --overwrite > /dev/null; \
	echo "==> deployments train-and-sample/default and train-and-sample/nightly"; \
	prefect --no-prompt deploy --prefect-file deploy/prefect.yaml --name default --name nightly \
		> $(LOCAL_DEPLOY)/deploy.out 2>&1 || { cat $(LOCAL_DEPLOY)/deploy.out; exit 1; }; \
	setsid nohup prefect worker start --pool diffusion-process > $(LOCAL_DEPLOY)/worker.log 2>&1 & \
	echo $$! > $(LOCAL_DEPLOY)/worker.pid; \
	echo "==> worker started (pid $$(cat $(LOCAL_DEPLOY)/worker.pid), log $(LOCAL_DEPLOY)/worker.log)"; \
	echo; \
	echo "UI: http://127.0.0.1:$(PORT). Start a run from a shell with:"; \
	echo "  . $(VENV)/bin/activate && export PREFECT_API_URL=$$PREFECT_API_URL"; \
	echo "  prefect deployment run train-and-sample/default --param preset=mnist-cpu --watch"; \
	echo "Stop it all with: make deploy-stop$(if $(filter-out 4200,$(PORT)), PORT=$(PORT))"

# Recipes run in /bin/sh (dash on Debian), whose kill takes -PGID but not '-- -PGID'.
deploy-stop: ## stop what deploy-local started (worker, then server; SIGKILL after 10 s)
	@for what in worker server; do \
		file=$(LOCAL_DEPLOY)/$$what.pid; \
		[ -f $$file ] || continue; \
		pid=$$(cat $$file); \
		if kill -0 $$pid 2>/dev/null; then \
			kill -TERM -$$pid 2>/dev/null || kill -TERM $$pid; \
			for _ in $$(seq 20); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
			if kill -0 $$pid 2>/dev/null; then \
				kill -KILL -$$pid 2>/dev/null || kill -KILL $$pid; \
				echo "==> $$what $$pid killed (still up 10 s after SIGTERM)"; \
			else \
				echo "==> $$what $$pid stopped"; \
			fi; \
		fi; \
		rm -f $$file; \
	done

clean-venv: ## remove .venv (the next make builds it again)
	rm -rf $(VENV)
