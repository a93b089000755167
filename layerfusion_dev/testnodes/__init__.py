"""Test-only ComfyUI nodes: loaded by the test and demo servers, never shipped to users' graphs.

`LayerFusionTestTinySDXL` hands a tiny random-weight SDXL-architecture MODEL, CLIP and VAE to a
real server workflow, where a checkpoint loader would stand in a user's graph.
"""


async def comfy_entrypoint():
    from .nodes import TestNodesExtension

    return TestNodesExtension()
