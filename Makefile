# ironfs — the two entry points a new user needs: `make run` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BACKING    ?= $(CURDIR)/var/backing
MOUNTPOINT ?= $(CURDIR)/var/s3
OPTIONS    ?=
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config attr gcc python3-dev python3-venv systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps lint clean

## Install everything and mount BACKING at MOUNTPOINT in the foreground.
run: deps $(VENV)/.installed
	mkdir -p "$(BACKING)" "$(MOUNTPOINT)"
	$(VENV)/bin/ironfs "$(BACKING)" "$(MOUNTPOINT)" $(if $(OPTIONS),-o $(OPTIONS))

## Install everything (test extras too) and run the linter and the whole suite.
test: deps $(VENV)/.installed-test
	$(VENV)/bin/ruff check ironfs tests
	$(VENV)/bin/python -m pytest -q

deps:
	@dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES); }

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check ironfs tests

clean:
	rm -rf $(VENV) build *.egg-info
