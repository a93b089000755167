"""`HookPointError`: raised wherever a patch the pack registered with ComfyUI did not run, naming
the ComfyUI version (never a silent no-op)."""

from __future__ import annotations


class HookPointError(RuntimeError):
    """A patch the pack registered with ComfyUI did not run."""


def host_version() -> str:
    """The running ComfyUI's version (for errors about its hook points)."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001 - any host without the module
        return "unknown"


def hook_point_error(node: str, what: str) -> HookPointError:
    return HookPointError(f"{node}: {what} on ComfyUI {host_version()}. Please report this with your ComfyUI version.")
