# Two commands set up a fresh machine:
#   make run   - create .venv if missing, train the default MAVOS model on the embedded benchmark, evaluate it
#   make test  - create .venv if missing, run the test suite
#   make demo  - create .venv if missing, start the browser demo on http://127.0.0.1:7860 (ARGS="ckpt_path=... port=...")
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test demo train evaluate venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Train on the embedded benchmark (generated under data/ on first use) and evaluate on its val videos.
run: $(STAMP)
	$(PY) train.py evaluate_after=true

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# Segment your own video in the browser (local only); see README "Demo".
demo: $(STAMP)
	$(PY) -m mavos.demo $(ARGS)

clean:
	rm -rf logs outputs wandb
