from __future__ import annotations

import pytest

from layerfusion_dev.host import import_comfy

import_comfy()  # the real ComfyUI, importable in-process (CPU), before any test module imports it


@pytest.fixture(scope="session", autouse=True)
def comfy_folders(tmp_path_factory):
    """Node previews and outputs go to a temporary folder, not into the ComfyUI host."""
    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("comfy_output")))


@pytest.fixture(scope="session")
def tiny():
    from layerfusion_dev.testnodes import tiny_sdxl

    return tiny_sdxl.build("depth1", seed=0)


@pytest.fixture(scope="session")
def tiny_full_unet():
    from layerfusion_dev.testnodes import tiny_sdxl

    return tiny_sdxl.build_unet("full", seed=0)


@pytest.fixture(scope="module", autouse=True)
def model_folders_restored():
    """Each test module leaves ComfyUI's model folder registry as it found it: folders a module
    registers (a layer_model of stand-ins, say) never leak into the next module's file lists."""
    import copy

    import folder_paths

    saved = copy.deepcopy(folder_paths.folder_names_and_paths)
    yield
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()
