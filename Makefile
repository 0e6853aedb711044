# Two commands do all set-up: `make quickstart` and `make test` (each creates .venv and installs first).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to a pair that imports together (qwen-vl-utils imports torchvision);
# override for another platform, e.g. make test TORCH="torch==2.9.1 torchvision==0.24.1".
TORCH ?= torch==2.14.1 torchvision==0.29.1
# DeepSpeed builds against the torch installed just before it (--no-build-isolation: otherwise pip builds it in an
# isolated env with a freshly downloaded torch). The tests run ZeRO-2/3 on CPU; its shared-memory comm op is compiled
# on first use (~20 s with g++, cached in ~/.cache/torch_extensions).
DEEPSPEED ?= deepspeed==0.19.8
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# the tiny model's family for `make quickstart`: the shipped config quickstart_<ARCH> where one exists (it holds what
# differs for that family), else the Qwen2.5-VL quickstart with the tiny model's architecture overridden
ARCH ?= qwen2_5_vl
QUICKSTART := $(if $(wildcard mmreason/configs/quickstart_$(ARCH).yaml),quickstart_$(ARCH),quickstart model.tiny.arch=$(ARCH))

# The wheels the GPU acceptance check (benchmarks/gpu_check.sh) needs beyond the GPU machine's image: CPython 3.12,
# manylinux x86-64, at the versions installed here (the list and why each: benchmarks/gpu_env.py), 60 MiB at most. They
# travel to the GPU machine with the working tree (README, GPU acceptance). TRL comes from the bench extra:
# .venv/bin/pip install -e '.[bench]' first.
GPU_WHEELS ?= .gpu-wheels

.PHONY: install test test-all quickstart lint clean gpu-wheels

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q --no-build-isolation $(DEEPSPEED)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the default suite leaves out the tests marked slow (about 12 minutes on 2 cores); test-all runs every test
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

quickstart: $(STAMP)
	$(BIN)/mmreason data make synthetic --task counting --out data/quickstart --n 1200 --seed 0
	$(BIN)/mmreason train $(QUICKSTART) --overwrite

# any existing environment will do (the wheels take their versions from it): no reinstall after a Makefile change
gpu-wheels:
	@test -x $(BIN)/python || $(MAKE) install
	$(BIN)/python benchmarks/gpu_env.py download $(GPU_WHEELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

clean:
	rm -rf $(VENV) runs data/quickstart
