# gm_skip_ros: the two commands of a fresh machine are `make demo` and `make test`.
# Both create (or reuse) the virtual environment .venv/ and install everything into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: all venv msgs demo test test-fast clean

all: test

# The stamp is rebuilt when the dependency lists change.
$(VENV)/.stamp: requirements.txt setup.py setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: a CPU wheel; an unpinned torch would pull CUDA packages.
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	@touch $@

venv: $(VENV)/.stamp

# The ROS 2 messages in msg/, generated with rosidl from the PyPI wheels and installed into
# the venv prefix (same CMakeLists.txt as colcon; see README "Package structure").
# Rebuilt only when the messages or the CMake files change.
MSGS_BUILD := build/msgs
$(VENV)/.msgs.stamp: $(VENV)/.stamp msg $(wildcard msg/*.msg) CMakeLists.txt $(wildcard cmake/*.cmake) package.xml gm_skip_ros/__init__.py $(wildcard config/*) $(wildcard launch/*)
	AMENT_PREFIX_PATH=$(CURDIR)/$(VENV) cmake -S . -B $(MSGS_BUILD) \
		-DCMAKE_INSTALL_PREFIX=$(CURDIR)/$(VENV) -DCMAKE_PREFIX_PATH=$(CURDIR)/$(VENV) \
		-DPython3_EXECUTABLE=$(CURDIR)/$(PY) -DGM_SKIP_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF \
		-DCMAKE_PROJECT_INCLUDE=$(CURDIR)/cmake/fix_wheel_include_dirs.cmake >/dev/null
	AMENT_PREFIX_PATH=$(CURDIR)/$(VENV) cmake --build $(MSGS_BUILD) -j 2 >/dev/null
	cmake --install $(MSGS_BUILD) >/dev/null
	@touch $@

msgs: $(VENV)/.msgs.stamp

demo: venv msgs
	$(VENV)/bin/gm-skip demo --out out/demo

test: venv msgs
	$(PY) -m pytest -q -ra test

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow and not ros" test

clean:
	rm -rf build install log out .pytest_cache
