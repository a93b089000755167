"""Facts about SDXL's UNet that tests check against (ComfyUI's transformer block keys)."""

SDXL_BLOCK_DEPTHS = {  # (block, id) -> number of transformer blocks
    ("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10,
    ("output", 0): 10, ("output", 1): 10, ("output", 2): 10, ("output", 3): 2, ("output", 4): 2, ("output", 5): 2,
}
SDXL_KEYS = {(*block, index) for block, depth in SDXL_BLOCK_DEPTHS.items() for index in range(depth)}
