VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo venv clean

venv: $(STAMP)

# constraints.txt pins the tested versions; pyproject.toml keeps the ranges users install against
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

# lint first (seconds): pyflakes + pycodestyle errors, the rules in pyproject.toml [tool.ruff]
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -ra --durations=15

demo: $(STAMP)
	$(VENV)/bin/swin-maskrcnn demo --out demo_out

clean:
	rm -rf demo_out runs
