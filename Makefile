# pgolf: the commands users run. `make setup` is idempotent; everything else uses .venv/.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PGOLF  := $(VENV)/bin/pgolf
UNAME  := $(shell uname -s)
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
# Linux without a GPU: the CPU build of torch (a plain `torch` pulls several GB of CUDA).
TORCH_PIN := $(if $(and $(filter Linux,$(UNAME)),$(if $(HAS_GPU),,1)),torch==2.13.0,torch)
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

setup: $(PY)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[mlx,torch,dev]"
	@$(PY) -c "import shared, mlx.core, torch; print('setup ok: torch', torch.__version__)"

demo: setup
	rm -rf $(DEMO_DIR)
	$(PY) -m shared.tools.demo --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) -m benchmarks.run

lint: setup
	$(VENV)/bin/ruff check shared mlx_train cuda_train tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
