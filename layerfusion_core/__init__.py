"""LayerFusion's core, grouped by concern:

- `layout`: the [fg, bg, blend] * N batch, its rows and LATENTs;
- `fusion`: the method as plain functions and state (settings, run, priors, masks, blends);
- `transparency`: transparent decode/encode and LayerDiffuse's transparent VAE;
- `weights`: the weight files and how they are found, read and downloaded;
- `patching`: the one package that touches ComfyUI's patch machinery;
- `layered_files`: PSD and OpenRaster files.

Only `patching` imports ComfyUI at module import time (the loaders import it inside functions), so the maths can be
tested on plain tensors.
"""
