from __future__ import annotations

import pytest
from safetensors.torch import save_file

from layerfusion_dev.comfy_server import ComfyServer
from layerfusion_dev.host import import_comfy
from layerfusion_dev.paths import current_frontend_args

STYLE_LORA = "your_style_lora.safetensors"  # the user's own LoRA in the style-on-bg workflow
FLUX_LORA = "layerlora.safetensors"  # LayerDiffuse's FLUX LoRA (a stand-in fitting the tiny FLUX model)


def pack_server(extra_args=()):
    """A real ComfyUI server for the tier-3 tests (not started): the pack, the test nodes, and random
    LayerDiffuse-format stand-ins (fitting the depth-1 tiny model) in its models/layer_model, plus
    the converted FLUX decoder/encoder stand-ins and a FLUX LoRA stand-in (fitting the tiny FLUX model)."""
    import_comfy()
    from layerfusion_dev.testnodes import standins, tiny_flux, tiny_sdxl

    srv = ComfyServer(test_nodes=True, extra_args=extra_args)
    try:
        unet = tiny_sdxl.build_unet("depth1", 0)
        standins.write_standins(srv.models_dir / "layer_model", standins.unet_shapes(unet))
        standins.write_conditional_standins(srv.models_dir / "layer_model", standins.unet_shapes(unet))
        (srv.models_dir / "loras").mkdir(parents=True, exist_ok=True)
        save_file(standins.kohya_lora_standin(unet), str(srv.models_dir / "loras" / STYLE_LORA))
        standins.write_flux_standins(srv.models_dir / "layer_model")
        save_file(standins.flux_lora_standin(tiny_flux.build_model(0)), str(srv.models_dir / "loras" / FLUX_LORA))
    except BaseException:
        srv.cleanup()
        raise
    return srv


@pytest.fixture(scope="session")
def server():
    """One real ComfyUI server for the tier-3 tests, with the host's own frontend."""
    srv = pack_server()
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def current_frontend_server():
    """The same server with the frontend current ComfyUI ships (--front-end-root)."""
    srv = pack_server(current_frontend_args())
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()
