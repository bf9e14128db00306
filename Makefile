# ironfs — the two entry points a new user needs: `make run` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BACKING    ?= $(CURDIR)/var/backing
MOUNTPOINT ?= $(CURDIR)/var/s3
OPTIONS    ?=
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config attr gcc python3-dev python3-venv systemd postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PREFIX     ?= /opt/ironfs

.PHONY: run test deps lint clean install

## Install everything and mount BACKING at MOUNTPOINT in the foreground.
run: deps $(VENV)/.installed
	mkdir -p "$(BACKING)" "$(MOUNTPOINT)"
	$(VENV)/bin/ironfs "$(BACKING)" "$(MOUNTPOINT)" $(if $(OPTIONS),-o $(OPTIONS))

## Install everything (test extras too) and run the type checker, the linter and the whole suite.
test: deps $(VENV)/.installed-test
	$(VENV)/bin/mypy
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

## For operators: ironfs in its own virtualenv under PREFIX, the commands on PATH,
## the mount(8) helper, and the systemd units (not enabled).
install: deps
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q .
	ln -sf $(PREFIX)/bin/ironfs /usr/local/bin/ironfs
	ln -sf $(PREFIX)/bin/mount.fuse.ironfs /sbin/mount.fuse.ironfs
	install -m 0644 systemd/ironfs@.service systemd/ironfs-reconcile@.service \
	    systemd/ironfs-reconcile@.timer /etc/systemd/system/
	mkdir -p /etc/ironfs
	[ -d /run/systemd/system ] && systemctl daemon-reload || true

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check ironfs tests

clean:
	rm -rf $(VENV) build *.egg-info
