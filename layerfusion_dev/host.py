"""The real ComfyUI, imported in-process (tier-2 tests, the benchmarks), without argument parsing."""

from __future__ import annotations

import sys
from pathlib import Path

from .paths import comfyui_dir


def import_comfy(cpu: bool = True) -> Path:
    """Put the ComfyUI host on sys.path and choose the device before anything loads model
    management (which reads it once, at import): the CPU, or (``cpu=False``) whatever ComfyUI finds,
    CUDA on a GPU machine."""
    host = comfyui_dir()
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args  # parses no command line (comfy.options.args_parsing is False)

    comfy.cli_args.args.cpu = cpu
    return host
