"""Lets the command-line scripts beside this file import this pack's `layerfusion_core`, whatever the
current directory: the package is loaded from the pack's own folder by its location, the way
ComfyUI loads a pack, and registered under its name (no import search path is changed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "layerfusion_core"


def load_core() -> None:
    if "layerfusion_core" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("layerfusion_core", CORE / "__init__.py",
                                                  submodule_search_locations=[str(CORE)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["layerfusion_core"] = module
    spec.loader.exec_module(module)
