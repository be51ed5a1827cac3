# Two entry points: `make demo` (main job on the bundled sample + model) and `make test`.
# Each sets up what it needs by itself: .venv, the pinned CPU torch first, the package with extras,
# and the apt packages the viewer tests need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
# nnU-Net v2 (the reference of tests/test_nnunet.py) and the light packages it imports, without their
# dependency trees: those pull a CUDA torch build that would replace the pinned CPU torch
NNUNET_PKGS := nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6 batchgenerators==0.25.5 \
	batchgeneratorsv2==0.3.6 SimpleITK==2.5.7 blosc2==4.15.0 ndindex==1.10.1 msgpack httpx==0.29.0 \
	connected-components-3d==4.1.1 seaborn==0.13.2
APT_PKGS := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 libdbus-1-3 libfontconfig1

.PHONY: demo test setup apt clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[testing]'
	$(BIN)/pip install -q --no-deps $(NNUNET_PKGS)
	touch $(STAMP)

setup: $(STAMP)

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/agg2exp demo --out demo_output --overwrite

test: setup apt
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) demo_output
