"""Import this repository as the Python package `layerfusion`, the way ComfyUI imports a pack
(a package from its folder), without ComfyUI: importing the root is cheap by design."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from .paths import REPO

PACKAGE = "layerfusion"


def import_pack() -> ModuleType:
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
