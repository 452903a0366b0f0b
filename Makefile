# pgolf: the commands users run. `make setup` is idempotent; everything else uses .venv/.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PGOLF  := $(VENV)/bin/pgolf
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, the build this machine needs: Linux without a GPU gets the CPU build from PyTorch's CPU
# index (a plain `torch` pulls several GB of CUDA), or the default index when that one is unreachable.
setup: $(PY)
	$(PY) shared/tools/setup_torch.py
	$(PY) -m pip install --quiet -e ".[mlx,torch,dev,plot,zpaq]"
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
