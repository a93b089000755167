"""Where things are: the repository, the ComfyUI host in use, the project's Python."""

from __future__ import annotations

import sys
from pathlib import Path

from . import bootstrap

REPO = Path(__file__).resolve().parents[1]
TEST_NODES = REPO / "layerfusion_dev" / "testnodes"  # linked into test servers' custom_nodes as layerfusion_testnodes
PACK_NAME = "ComfyUI-LayerFusion"  # the folder name the pack is given inside a server's custom_nodes


def comfyui_dir() -> Path:
    return bootstrap.host_path()[0]


def python() -> Path:
    """The interpreter that runs ComfyUI: the project's venv, or this one when already inside it."""
    venv = bootstrap.venv_python()
    return venv if venv.is_file() else Path(sys.executable)


def pack_inside_host(host: Path) -> bool:
    """True when this repository already sits in ``host``'s custom_nodes (ComfyUI loads it itself)."""
    return REPO.parent.resolve() == (host / "custom_nodes").resolve()


def current_frontend_args() -> list[str]:
    """Server arguments for the frontend current ComfyUI ships (`make browser` installs it)."""
    root = bootstrap.current_frontend_root()
    if not (root / "index.html").is_file():
        raise RuntimeError(f"the current ComfyUI frontend is not installed at {root}: run `make browser`")
    return ["--front-end-root", str(root)]
