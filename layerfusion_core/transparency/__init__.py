"""Transparent images: the RGBA decode and encode maths, LayerDiffuse's transparent VAE networks
and their SDXL/FLUX variants, loading them under ComfyUI's model management, and the FLUX file
converter."""
