"""The real ComfyUI, imported in-process for tier-2 tests (CPU only, no argument parsing)."""

from __future__ import annotations

import sys
from pathlib import Path

from .paths import comfyui_dir


def import_comfy() -> Path:
    """Put the ComfyUI host on sys.path and select the CPU before anything loads model management."""
    host = comfyui_dir()
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args  # parses no command line (comfy.options.args_parsing is False)

    comfy.cli_args.args.cpu = True
    return host
