"""The flag that tells LayerFusion's patches the batch is [fg, bg, blend] * N (its public contract:
`layerfusion_core.patching.LAYOUT_OPTION`; a test checks the two agree)."""

LAYOUT_OPTION = "layerfusion_layout"
