"""Download LayerDiffuse files this pack knows into ComfyUI's models folder, verified by sha256.

    python scripts/download_models.py --list
    python scripts/download_models.py vae_transparent_decoder.safetensors [--models-dir DIR]

Runs with the Python of the ComfyUI the pack is installed in (it needs huggingface_hub, which the
pack's requirements.txt names). The models folder is --models-dir, else the ComfyUI `models`
folder above this pack's `custom_nodes/` place, else $LAYERFUSION_MODELS (the one `make demo`
reads). Files are fetched at the revision pinned in layerfusion_core/weights/known_files.py and written
only into `<models>/layer_model/`; each result, or each failure, is one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import _pack

_pack.load_core()
from layerfusion_core.weights import downloads  # noqa: E402
from layerfusion_core.weights.known_files import KNOWN_FILES  # noqa: E402

PROG = "download_models"


def list_files(models_dir: str | None) -> None:
    """One line per known file: name, size, folder, whether it is pinned, whether it is in place."""
    try:
        models = models_dir or downloads.default_models_dir()
    except downloads.DownloadError:
        models = None
    for known in KNOWN_FILES:
        size = f"{known.size_mb:g} MB" if known.size_mb else "size unknown"
        pinned = "pinned" if known.pinned else "not pinned (needs --trust-hub-hash)"
        if known.converted_from is not None:
            pinned = f"not downloadable: convert {known.converted_from} with scripts/convert_flux_transparent_vae.py"
        here = ""
        if models is not None:
            here = ", present" if os.path.isfile(os.path.join(models, known.folder, known.name)) else ", missing"
        print(f"{known.name}  ({size}, {known.folder}/, {pinned}{here})")
    if models is None:
        print("(no models folder found: pass --models-dir to see which files are present)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="file names from --list")
    parser.add_argument("--list", action="store_true", help="list the files this pack knows and exit")
    parser.add_argument("--models-dir", help="ComfyUI's models folder (files go into its layer_model/)")
    parser.add_argument("--trust-hub-hash", action="store_true",
                        help="for a file with no pinned revision and sha256 yet: verify against the sha256 the Hub "
                             "reports for it at the current main commit instead of refusing")
    parser.add_argument("--force", action="store_true", help="download again even if the file is already there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if args.list:
        list_files(args.models_dir)
        return 0
    if not args.files:
        parser.error("name a file (see --list)")
    failed = 0
    for name in args.files:
        try:
            result = downloads.download(name, args.models_dir, trust_hub_hash=args.trust_hub_hash, force=args.force)
        except downloads.DownloadError as err:
            print(f"{PROG}: {err}", file=sys.stderr)
            failed += 1
            continue
        except KeyboardInterrupt:
            print(f"{PROG}: {name}: interrupted; nothing was kept", file=sys.stderr)
            return 130
        if not result.downloaded:
            print(f"{name}: already in {os.path.dirname(result.path)} (--force to download it again)")
        else:
            source = downloads.SOURCES[result.hash_source]
            print(f"{name}: downloaded into {os.path.dirname(result.path)} (commit {result.revision}, "
                  f"sha256 {result.sha256}, {source})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
