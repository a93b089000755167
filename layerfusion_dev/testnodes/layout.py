"""The flag that tells LayerFusion's patches the batch is [fg, bg, blend] * N (its public contract:
`layerfusion_core.patching.LAYOUT_OPTION`; a test checks the two agree)."""

LAYOUT_OPTION = "layerfusion_layout"

LAYERED_KEY = "layerfusion_sets"  # a LayerFusion LATENT's marker (`layerfusion_core.layout.latents.LAYERED_KEY`)


def foreground_rows(latent: dict) -> slice:
    """The fg rows of a LayerFusion LATENT ([fg, bg, blend] * N), or every row of a plain one."""
    return slice(0, None, 3) if latent.get(LAYERED_KEY) else slice(None)
