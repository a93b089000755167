"""Convert LayerDiffuse's FLUX TransparentVAE.pth to the two safetensors files the nodes load.

    python scripts/convert_flux_transparent_vae.py TransparentVAE.pth [--out-dir DIR] [--overwrite]

TransparentVAE.pth comes from https://huggingface.co/RedAIGC/Flux-version-LayerDiffuse. It is a
pickle: it is read only with torch.load(weights_only=True), which refuses anything but tensors and
plain containers. Writes vae_transparent_decoder_flux.safetensors and
vae_transparent_encoder_flux.safetensors (the FLUX VAE the file also holds is left out: ComfyUI
loads ae.safetensors). --out-dir defaults to ComfyUI's models/layer_model (the `models` folder above
this pack's custom_nodes/ place, else $LAYERFUSION_MODELS). Each result, or the failure, is one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import _pack

_pack.load_core()
from layerfusion_core.transparency import flux_convert  # noqa: E402
from layerfusion_core.weights import downloads  # noqa: E402
from layerfusion_core.weights.known_files import LAYER_MODEL_FOLDER  # noqa: E402

PROG = "convert_flux_transparent_vae"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("pth", help="the downloaded TransparentVAE.pth")
    parser.add_argument("--out-dir", help="where to write the two files (default: ComfyUI's models/layer_model)")
    parser.add_argument("--overwrite", action="store_true", help="replace files already there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    try:
        out_dir = args.out_dir or os.path.join(downloads.default_models_dir(), LAYER_MODEL_FOLDER)
    except downloads.DownloadError:
        print(f"{PROG}: no ComfyUI models folder found (this pack is not in ComfyUI/custom_nodes/ and "
              f"{downloads.MODELS_ENV} is not set); pass --out-dir", file=sys.stderr)
        return 1
    try:
        done = flux_convert.convert(args.pth, out_dir, overwrite=args.overwrite)
    except flux_convert.ConvertError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {done.decoder} and {done.encoder} (left out {done.dropped} sd_vae.* tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
