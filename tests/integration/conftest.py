from __future__ import annotations

import pytest

from support.host import import_comfy

import_comfy()  # the real ComfyUI, importable in-process (CPU), before any test module imports it


@pytest.fixture(scope="session")
def tiny():
    from layerfusion_testnodes import tiny_sdxl

    return tiny_sdxl.build("depth1", seed=0)


@pytest.fixture(scope="session")
def tiny_full_unet():
    from layerfusion_testnodes import tiny_sdxl

    return tiny_sdxl.build_unet("full", seed=0)
