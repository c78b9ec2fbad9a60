# Two commands do everything on a fresh machine:
#   make demo   sets up .venv and runs the main job (super-resolve a held-out photo with the bundled model)
#   make test   sets up .venv and runs the whole test suite (unit tests and the notebook course under nbval)
VENV  ?= .venv
PY    := $(VENV)/bin/python
# PyTorch: kept if the environment already has one; otherwise `pip install torch` from the default index, which
# is the CUDA build on Linux x86-64 (large) and the only build elsewhere. For the small CPU-only build, opt in to
# PyTorch's own CPU wheel index:  make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch>=2.1
TORCH_INDEX ?=

.PHONY: setup setup-package demo test notebooks bench clean
setup: $(VENV)/.installed

# the package alone: what `make demo` needs
setup-package: $(VENV)/.installed-package

$(VENV)/.installed-package: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	touch $@

# with the notebooks and the test stack
$(VENV)/.installed: $(VENV)/.installed-package
	$(PY) -m pip install -q -e ".[notebooks,test]"
	touch $@

demo: setup-package
	$(VENV)/bin/sr3-mini demo

# Every notebook kernel, and most tests, run on one thread (the same numbers on every machine), so one pytest
# process leaves a second core idle: WORKERS processes (pytest-xdist) each take whole files, a notebook's cells
# stay together and in order. WORKERS=0 runs everything in this process.
WORKERS ?= 2
test: setup
	TQDM_DISABLE=1 $(VENV)/bin/pytest --nbval -q $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadfile)

# Re-execute every notebook in place: the one command that produces the committed outputs nbval compares.
notebooks: setup
	TQDM_DISABLE=1 $(PY) scripts/execute_notebooks.py notebooks/*.ipynb

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) *.egg-info
