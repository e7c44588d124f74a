# make install | test | demo | bench  (all run from ./.venv, which `make install` creates)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

# the console's test drives Debian's Chromium (tests/test_console.py); `make bench` uses wrk
$(STAMP): setup.cfg setup.py
	command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v wrk >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver wrk; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# four at a time (they mostly wait on subprocesses) where timing does not matter, then the
# timing-sensitive tests: two streams of those that leave a core free, then the rest alone
# (tests/conftest.py says which are which)
test: install
	$(BIN)/python -m pytest -q -n 4 -m "not serial and not paired"; a=$$?; \
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m paired; b=$$?; \
	$(BIN)/python -m pytest -q -m serial; c=$$?; test $$a = 0 && test $$b = 0 && test $$c = 0

demo: install
	$(BIN)/python demo_hello/run_demo.py

# not part of `test`: ~5 min; pip-installs its peers (zerorpc, Pyro5, grpcio) and matplotlib on
# first run, skipping any that will not install; writes bench/results.json and bench/results.png
bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .etcd-data *.egg-info
