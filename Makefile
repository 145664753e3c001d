# EMLabel developer entry points. `make serve` and `make test` are the README's two commands.
PYTHON  ?= python3
VENV    ?= .venv
DEMO_STUDIES := demo-studies
STUDIES ?= $(DEMO_STUDIES)
HOST    ?= 127.0.0.1
PORT    ?= 8000
CONF    ?=
PY      := $(VENV)/bin/python
# DICOMweb mode (make serve-dicomweb): Orthanc's port and the folder holding its database
# and MONAI Label's DICOMweb cache (every label version).
ORTHANC_PORT   ?= 8042
DICOMWEB_STATE ?= .dicomweb
ORTHANC_DEBS   := orthanc orthanc-dicomweb
SUDO           := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Every file that defines the install; a change to any of them rebuilds the venv from scratch.
INSTALL_FILES := requirements.txt requirements-dev.txt constraints.txt pyproject.toml
INSTALL_HASH  := $(shell cat $(INSTALL_FILES) | sha256sum | cut -c1-16)
STAMP         := $(VENV)/.emlabel-install-$(INSTALL_HASH)

export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export SAM2_BUILD_CUDA := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MONAI_LABEL_TRACKING_ENABLED := false

.PHONY: install serve serve-dicomweb orthanc-packages viewer-packages test lint demo bench-info clean-demo

# The stamp's name carries the hash of the install files, so it needs no file-time
# prerequisites (a fresh clone's files are always newer than a cached venv's stamp).
$(STAMP):
	@echo "== installing the EMLabel stack into $(VENV) (first time: ~4-6 min, ~8 GB)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

# The editable install points at this checkout; redo it when the venv was built by another clone.
install: $(STAMP)
	@$(PY) -c "import pathlib, emlabel, sys; sys.exit(pathlib.Path(emlabel.__file__).resolve().parent != pathlib.Path('lib/emlabel').resolve())" 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps --no-build-isolation -e .

demo: install
	@test -f $(DEMO_STUDIES)/emlabel_demo/manifest.json || $(VENV)/bin/emlabel demo --out $(DEMO_STUDIES)

# The demo studies are generated only when serving them (never into your own folder).
serve: install
	@if [ "$(STUDIES)" = "$(DEMO_STUDIES)" ]; then $(MAKE) --no-print-directory demo; fi
	@echo ""
	@echo "== EMLabel on http://$(HOST):$(PORT)  (studies: $(STUDIES))"
	@echo "   3D Slicer: MONAI Label module -> MONAI Label server: http://$(HOST):$(PORT) -> refresh"
	@echo "   Browser:   http://$(HOST):$(PORT)/  (REST API docs)   http://$(HOST):$(PORT)/info/"
	@echo ""
	$(PY) -m monailabel.main start_server --app apps/emlabel --studies $(STUDIES) \
	  --host $(HOST) --port $(PORT) $(CONF)

# $(call apt_install,<packages>): install missing Debian packages (root or sudo the first time).
define apt_install
	@if ! dpkg -s $(1) >/dev/null 2>&1; then \
	  echo "== installing Debian packages $(1) (needs root or sudo)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y $(1) \
	    || { $(SUDO) apt-get update && $(SUDO) apt-get install -y $(1); }; \
	fi
endef

# Orthanc + its DICOMweb plugin.
orthanc-packages:
	$(call apt_install,$(ORTHANC_DEBS))

# What the viewer tests drive: Chromium, Orthanc + DICOMweb.
viewer-packages:
	$(call apt_install,chromium $(ORTHANC_DEBS))

# DICOMweb mode: a private Orthanc on 127.0.0.1:$(ORTHANC_PORT) with the studies as DICOM series
# (final labels as DICOM-SEG), and EMLabel on its DICOMweb URL. Ctrl-C stops both.
serve-dicomweb: install orthanc-packages
	@if [ "$(STUDIES)" = "$(DEMO_STUDIES)" ]; then $(MAKE) --no-print-directory demo; fi
	$(VENV)/bin/emlabel serve-dicomweb --studies $(STUDIES) --state-dir $(DICOMWEB_STATE) \
	  --orthanc-port $(ORTHANC_PORT) --host $(HOST) --port $(PORT) -- $(CONF)

lint: install
	$(PY) -m ruff check .

test: install viewer-packages
	$(PY) -m ruff check .
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_STUDIES)
