# Two entry points: `make demo` (main job on the bundled sample + model) and `make test`.
# Each sets up what it needs by itself: .venv, the pinned CPU torch first, the package with extras,
# and the apt packages the viewer tests need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
APT_PKGS := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 libdbus-1-3 libfontconfig1

.PHONY: demo test setup apt clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[testing]'
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
