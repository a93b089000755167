"""The flag that tells LayerFusion's patches the batch is [fg, bg, blend] * N (its public contract:
`layerfusion_core.patching.LAYOUT_OPTION`; a test checks the two agree)."""

LAYOUT_OPTION = "layerfusion_layout"

LAYERED_KEY = "layerfusion_sets"  # a LayerFusion LATENT's marker (`layerfusion_core.layout.latents.LAYERED_KEY`)
FOREGROUNDS_KEY = "layerfusion_foregrounds"  # its foregrounds per set (`layerfusion_core.layout.latents.FOREGROUNDS_KEY`)


def foreground_rows(latent: dict) -> list[int] | slice:
    """The fg rows of a LayerFusion LATENT ([fg_1..fg_K, bg, blend] * N, set by set), or every row of a plain one."""
    if not latent.get(LAYERED_KEY):
        return slice(None)
    k = latent.get(FOREGROUNDS_KEY, 1)
    return [r for r in range(latent["samples"].shape[0]) if r % (k + 2) < k]
