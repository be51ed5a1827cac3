"""Shared by the napari scripts: a 1920x1080 screen, re-running the script under Xvfb when there is none."""

from __future__ import annotations

import os
import shutil
import sys

SIZE = (1920, 1080)


def ensure_display() -> None:
    """Return if a display exists; otherwise re-execute this script under ``xvfb-run`` at :data:`SIZE`."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("AGG2EXP_NO_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: run `make apt` (installs xvfb) or set DISPLAY")
    os.environ["AGG2EXP_NO_XVFB"] = "1"
    args = [xvfb, "-a", "-s", f"-screen 0 {SIZE[0]}x{SIZE[1]}x24", sys.executable, *sys.argv]
    os.execv(xvfb, args)
