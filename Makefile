# Two commands do everything on a fresh machine:
#   make demo   sets up .venv and runs the main job (super-resolve a held-out photo with the bundled model)
#   make test   sets up .venv and runs the whole test suite (unit tests and the notebook course under nbval)
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of PyTorch; set TORCH=torch to take whatever your platform's default is.
TORCH ?= torch==2.13.0

.PHONY: setup demo test notebooks bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[notebooks,test]"
	touch $@

demo: setup
	$(VENV)/bin/sr3-mini demo

test: setup
	TQDM_DISABLE=1 $(VENV)/bin/pytest --nbval -q

# Re-execute every notebook in place: the one command that produces the committed outputs nbval compares.
notebooks: setup
	TQDM_DISABLE=1 $(PY) scripts/execute_notebooks.py notebooks/*.ipynb

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) *.egg-info
