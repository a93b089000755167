from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from layerfusion_dev.comfy_server import ComfyServer
from layerfusion_dev.host import import_comfy
from layerfusion_dev.paths import current_frontend_args

STYLE_LORA = "your_style_lora.safetensors"  # the user's own LoRA in the style-on-bg workflow
FLUX_LORA = "layerlora.safetensors"  # LayerDiffuse's FLUX LoRA (a stand-in fitting the tiny FLUX model)


@pytest.fixture(scope="session")
def standin_models(tmp_path_factory) -> Path:
    """The tier-3 servers' models folder, written once per session (each server gets a copy):
    random LayerDiffuse-format stand-ins (fitting the depth-1 tiny model) in layer_model, plus the
    converted FLUX decoder/encoder stand-ins, and in loras an ordinary LoRA and a FLUX LoRA
    stand-in (fitting the tiny FLUX model)."""
    import_comfy()
    from layerfusion_dev.testnodes import standins, tiny_flux, tiny_sdxl

    models = tmp_path_factory.mktemp("standin_models")
    unet = tiny_sdxl.build_unet("depth1", 0)
    standins.write_standins(models / "layer_model", standins.unet_shapes(unet))
    standins.write_conditional_standins(models / "layer_model", standins.unet_shapes(unet))
    standins.write_flux_standins(models / "layer_model")
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(standins.kohya_lora_standin(unet), str(models / "loras" / STYLE_LORA))
    save_file(standins.flux_lora_standin(tiny_flux.build_model(0)), str(models / "loras" / FLUX_LORA))
    return models


_LAUNCHED: list[ComfyServer] = []  # the session server, launched as soon as the tests are chosen


def pytest_collection_finish(session: pytest.Session) -> None:
    """When tier-3 tests that use the session server are selected, its ComfyUI starts now, in the
    background, while the quicker tiers run (they run first: tests/conftest.py)."""
    if session.config.option.collectonly or not any("server" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    _LAUNCHED.append(ComfyServer(test_nodes=True).launch())


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _LAUNCHED:  # launched but never used (the tests that would have were deselected or skipped)
        _LAUNCHED.pop().cleanup()


def pack_server(request, extra_args=(), prelaunched: bool = False) -> ComfyServer:
    """A real ComfyUI server for the tier-3 tests, started: the pack, the test nodes, and a copy of
    the session's stand-in models folder (`standin_models`, written while ComfyUI starts up the
    first time) as its models folder. ``prelaunched``: the one launched after collection, if any."""
    srv = _LAUNCHED.pop() if prelaunched and _LAUNCHED else ComfyServer(test_nodes=True, extra_args=extra_args)
    try:
        if srv.process is None:
            srv.launch()
        shutil.copytree(request.getfixturevalue("standin_models"), srv.models_dir, dirs_exist_ok=True)
        srv.wait_ready()
    except BaseException:
        srv.cleanup()
        raise
    return srv


@pytest.fixture(scope="session")
def server(request):
    """One real ComfyUI server for the tier-3 tests, with the host's own frontend."""
    srv = pack_server(request, prelaunched=True)
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def current_frontend_server(request):
    """The same server with the frontend current ComfyUI ships (--front-end-root)."""
    srv = pack_server(request, current_frontend_args())
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def start_pack_server(request):
    """Start another server like `server` (its own copy of the stand-ins); the caller cleans it up."""
    return lambda extra_args=(): pack_server(request, extra_args)
