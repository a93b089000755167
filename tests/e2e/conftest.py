from __future__ import annotations

import pytest

from safetensors.torch import save_file

from support.comfy_server import ComfyServer
from support.host import import_comfy


STYLE_LORA = "your_style_lora.safetensors"  # the user's own LoRA in the style-on-bg workflow
FLUX_LORA = "layerlora.safetensors"  # LayerDiffuse's FLUX LoRA (a stand-in fitting the tiny FLUX model)


@pytest.fixture(scope="session")
def server():
    """One real ComfyUI server for the tier-3 tests: the pack, the test nodes, and random
    LayerDiffuse-format stand-ins (fitting the depth-1 tiny model) in its models/layer_model, plus
    the converted FLUX decoder/encoder stand-ins and a FLUX LoRA stand-in (fitting the tiny FLUX model)."""
    import_comfy()
    from layerfusion_testnodes import standins, tiny_flux, tiny_sdxl

    srv = ComfyServer(test_nodes=True)
    try:
        unet = tiny_sdxl.build_unet("depth1", 0)
        standins.write_standins(srv.models_dir / "layer_model", standins.unet_shapes(unet))
        standins.write_conditional_standins(srv.models_dir / "layer_model", standins.unet_shapes(unet))
        (srv.models_dir / "loras").mkdir(parents=True, exist_ok=True)
        save_file(standins.kohya_lora_standin(unet), str(srv.models_dir / "loras" / STYLE_LORA))
        standins.write_flux_standins(srv.models_dir / "layer_model")
        save_file(standins.flux_lora_standin(tiny_flux.build_model(0)), str(srv.models_dir / "loras" / FLUX_LORA))
        srv.start()
        yield srv
    finally:
        srv.cleanup()
