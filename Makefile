# Two commands do all the set-up on a fresh machine: `make run` (a completion with the shipped model) and
# `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.llama-cpp
PROMPT ?= def fibonacci(n):
LLAMA_CPP := llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install test test-quick lint-imports run completions corpus tiny-model gpu-check clean

$(STAMP): pyproject.toml setup.py $(wildcard sc2cli/kernels/*.cpp sc2cli/kernels/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on disk; installing the pin first keeps pip from pulling a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The native decode kernels (setup.py) compile against the torch just installed: no isolated build.
	$(BIN)/pip install -q setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

# llama.cpp's Python bindings, a test oracle (only the tests need them, not `make run`): built from source once
# (about ten minutes on two cores), then pip's wheel cache serves every later install. Built for AVX2, not for this
# machine's CPU: the cached wheel must also run on the next machine, which may lack AVX-512 (llama.cpp's runtime
# choice of CPU code, GGML_BACKEND_DL, leaves its CPU libraries out of this package's wheel). If it cannot be
# built, its tests skip with the reason.
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q '$(LLAMA_CPP)' \
		|| echo "llama-cpp-python could not be built: the llama.cpp tests will be skipped" >&2
	touch $(LLAMA_STAMP)

install: $(STAMP)

test: $(LLAMA_STAMP) lint-imports
	$(BIN)/python -m pytest

# The tests that start no process and train nothing: a quick tier while working.
test-quick: $(LLAMA_STAMP) lint-imports
	$(BIN)/python -m pytest -m "not slow"

# The layers (pyproject.toml [tool.importlinter]): fails when an import runs upward.
lint-imports: $(STAMP)
	$(BIN)/lint-imports

# PROMPT reaches the command through the environment, never pasted into the shell line: quotes, apostrophes and
# dollars in it stay as typed.
export PROMPT
run: $(STAMP)
	$(BIN)/sc2 complete "$$PROMPT"

completions: $(STAMP)
	$(BIN)/python -m sc2cli.cli.completions completions

# The training corpus (sc2cli/train/corpus.py): permissively licensed Python from the standard library, the
# packages installed here and wheels fetched from PyPI by name, deduplicated, held out by package; its data card
# is docs/data-card.md. About 10 minutes (the wheels are fetched once, into data/corpus-wheels).
CORPUS ?= data/corpus
corpus: $(STAMP)
	$(BIN)/python -m sc2cli.train.corpus build $(CORPUS) --card docs/data-card.md > /dev/null

# Reproduces the shipped model from scratch (its recipe is `sc2 train`'s defaults, 5000 steps): about 5.3 hours
# on a 2-core CPU (2,150 tokens/s), resumable (run it again to continue); add `--device cuda` to the train line on
# a GPU (2-3 minutes on an H100).
tiny-model: $(STAMP)
	$(BIN)/sc2 train stdlib --out runs/sc2-tiny
	$(BIN)/python -m sc2cli.train export runs/sc2-tiny sc2cli/shipped/sc2-tiny

# The checks that need a CUDA GPU (issue 16's CUDA target), as one command for a short lease on a GPU machine whose
# image already has torch, transformers and pytest (no registry there, so no venv: the checkout runs from
# PYTHONPATH): the CUDA tests against the reference, the prefill breakdown (tests/cuda_profile.py), then
# `sc2 bench speed` on the 3B shape with a 512- and an 8,192-token prompt (the sliding window applies to the
# second). Every step runs even when one before it failed; the files land in GPU_OUT and the exit status says
# whether all passed. Not yet run on a GPU: sized, by estimate, to about 8 minutes on an H200, most of it writing
# the random 3B checkpoint and loading it in each process.
GPU_PYTHON ?= python3
GPU_OUT ?= gpu-check
gpu-check:
	mkdir -p $(GPU_OUT)
	export PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1; failed=0; \
	$(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/test_cuda.py > $(GPU_OUT)/cuda-tests.txt 2>&1 || failed=1; \
	$(GPU_PYTHON) tests/cuda_profile.py > $(GPU_OUT)/prefill-profile.txt 2>&1 || failed=1; \
	for tokens in 512 8192; do \
		$(GPU_PYTHON) -m sc2cli bench speed --shape 3b --device cuda --repeats 1 --prompt-tokens $$tokens \
			--new-tokens 64 --peers transformers --json > $(GPU_OUT)/bench-3b-$$tokens.json \
			2> $(GPU_OUT)/bench-3b-$$tokens.log || failed=1; \
	done; \
	tail -n 3 $(GPU_OUT)/cuda-tests.txt; grep "tok/s" $(GPU_OUT)/prefill-profile.txt; exit $$failed

clean:
	rm -rf $(VENV) build *.egg-info
