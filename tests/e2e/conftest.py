from __future__ import annotations

import pytest

from support.comfy_server import ComfyServer
from support.host import import_comfy


@pytest.fixture(scope="session")
def server():
    """One real ComfyUI server for the tier-3 tests: the pack, the test nodes, and random
    LayerDiffuse-format stand-ins (fitting the depth-1 tiny model) in its models/layer_model."""
    import_comfy()
    from layerfusion_testnodes import standins, tiny_sdxl

    srv = ComfyServer(test_nodes=True)
    try:
        standins.write_standins(srv.models_dir / "layer_model", standins.unet_shapes(tiny_sdxl.build_unet("depth1", 0)))
        srv.start()
        yield srv
    finally:
        srv.cleanup()
