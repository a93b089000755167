"""The LayerDiffuse weight files users already have, and where ComfyUI keeps them.

One table (`KNOWN_FILES`) describes every file this pack knows; the `layer_model` model folder is
registered with ComfyUI's folder_paths (entries in extra_model_paths.yaml keep working). Only
safetensors files are ever listed or read: no pickle is ever loaded (the FLUX files are converted
from a published pickle by scripts/convert_flux_transparent_vae.py, which reads it only with
torch.load(weights_only=True)).
"""

from __future__ import annotations

import dataclasses
import enum
import os

LAYER_MODEL_FOLDER = "layer_model"
LORA_FOLDER = "loras"
SAFE_SUFFIXES = (".safetensors", ".sft")
PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the pack: above layerfusion_core/weights/
DOWNLOAD_SCRIPT = os.path.join(PACK_DIR, "scripts", "download_models.py")  # the download helper
CONVERT_SCRIPT = os.path.join(PACK_DIR, "scripts", "convert_flux_transparent_vae.py")  # FLUX .pth -> safetensors
HF_REPO = "LayerDiffusion/layerdiffusion-v1"
# The FLUX variant (RedAIGC's LayerDiffuse for FLUX.1-dev): its README says to download the
# repository's files from this Hugging Face repository; the URL pattern below was not checked
# here (huggingface.co is unreachable offline). It publishes TransparentVAE.pth (pickled: this
# pack never unpickles it; the converter reads it with weights_only=True) and the FLUX LoRA
# layerlora.safetensors (for ComfyUI's own LoRA loader, in models/loras).
FLUX_HF_REPO = "RedAIGC/Flux-version-LayerDiffuse"
FLUX_TRANSPARENT_VAE = "TransparentVAE.pth"
FLUX_LORA = "layerlora.safetensors"

# TO BE FILLED IN: the 40-hex commit of LayerDiffusion/layerdiffusion-v1 that the download helper
# (downloads.py, scripts/download_models.py) fetches, and, in the table below, each file's sha256 at
# that commit. Neither was known when this was written (huggingface.co was unreachable), so none is
# invented here: until both are set for a file, the helper refuses it unless asked to trust the
# sha256 the Hub reports. Filling in these values is the only change needed to pin downloads.
LAYERDIFFUSION_V1_REVISION: str | None = None


class FileKind(enum.Enum):
    ATTENTION_LORA = "attention LoRA (rank 256, frozen-patcher keys)"
    FULL_DELTA = "full weight deltas (frozen-patcher keys)"
    CONDITIONAL = "conditional model (deltas, widened input conv)"
    DECODER = "transparent VAE decoder"
    ENCODER = "transparent VAE latent-offset encoder"


@dataclasses.dataclass(frozen=True)
class KnownFile:
    name: str
    kind: FileKind
    arch: str  # "sdxl" or "sd15"
    size_mb: float  # as published
    sha256: str | None = None  # lower-case hex at `revision`; None where no verified hash is known
    repo: str = HF_REPO  # the Hugging Face repository that publishes it
    revision: str | None = LAYERDIFFUSION_V1_REVISION  # the pinned commit; None until filled in
    converted_from: str | None = None  # the published file this one is converted from (not downloadable itself)

    @property
    def url(self) -> str:
        """Where users download it (or, for a converted file, its source) by hand (the main branch)."""
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.converted_from or self.name}"

    @property
    def pinned(self) -> bool:
        """True when both the commit and the sha256 are known, so a download can be verified."""
        return self.revision is not None and self.sha256 is not None

    @property
    def folder(self) -> str:
        return LAYER_MODEL_FOLDER


KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile("layer_xl_transparent_attn.safetensors", FileKind.ATTENTION_LORA, "sdxl", 743),
    KnownFile("layer_xl_transparent_conv.safetensors", FileKind.FULL_DELTA, "sdxl", 3620),
    KnownFile("vae_transparent_decoder.safetensors", FileKind.DECODER, "sdxl", 208),
    KnownFile("vae_transparent_encoder.safetensors", FileKind.ENCODER, "sdxl", 2.4),
    KnownFile("layer_xl_fg2ble.safetensors", FileKind.CONDITIONAL, "sdxl", 702),
    KnownFile("layer_xl_bg2ble.safetensors", FileKind.CONDITIONAL, "sdxl", 702),
    KnownFile("layer_xl_fgble2bg.safetensors", FileKind.CONDITIONAL, "sdxl", 702),
    KnownFile("layer_xl_bgble2fg.safetensors", FileKind.CONDITIONAL, "sdxl", 3620),
    KnownFile("layer_sd15_transparent_attn.safetensors", FileKind.ATTENTION_LORA, "sd15", 0),
    # FLUX: written by scripts/convert_flux_transparent_vae.py from the published pickled file (379 MB
    # with the FLUX VAE it also holds, which is dropped); sizes are of the converted bf16 tensors.
    KnownFile("vae_transparent_decoder_flux.safetensors", FileKind.DECODER, "flux", 208, repo=FLUX_HF_REPO,
              revision=None, converted_from=FLUX_TRANSPARENT_VAE),
    KnownFile("vae_transparent_encoder_flux.safetensors", FileKind.ENCODER, "flux", 2.4, repo=FLUX_HF_REPO,
              revision=None, converted_from=FLUX_TRANSPARENT_VAE),
)
KNOWN_BY_NAME: dict[str, KnownFile] = {f.name: f for f in KNOWN_FILES}


def known_file(file_name: str) -> KnownFile | None:
    """The table entry for a file name (its base name), if this pack knows it."""
    return KNOWN_BY_NAME.get(os.path.basename(file_name))


def register_model_folders() -> None:
    """Add `<models>/layer_model` to ComfyUI's folder_paths (call once, from the entry point)."""
    import folder_paths

    folder_paths.add_model_folder_path(LAYER_MODEL_FOLDER, os.path.join(folder_paths.models_dir, LAYER_MODEL_FOLDER))


def list_files(folder: str) -> list[str]:
    """The safetensors files ComfyUI lists in one of its model folders (names relative to it)."""
    import folder_paths

    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return sorted(n for n in names if n.lower().endswith(SAFE_SUFFIXES))


def lora_choices() -> list[str]:
    """What `LayerFusion LoRA Apply` offers: layer_model files first, then ordinary LoRAs."""
    seen = list_files(LAYER_MODEL_FOLDER)
    return seen + [n for n in list_files(LORA_FOLDER) if n not in seen]


def resolve(file_name: str, folders: tuple[str, ...] = (LAYER_MODEL_FOLDER, LORA_FOLDER)) -> str:
    """The full path of a listed file name (first folder that has it). Names come only from
    ComfyUI's folder lists; a name not listed there is an error that says where files belong."""
    import folder_paths

    for folder in folders:
        if file_name in list_files(folder):
            return folder_paths.get_full_path_or_raise(folder, file_name)
    if not file_name.lower().endswith(SAFE_SUFFIXES):
        raise FileNotFoundError(
            f"{file_name} is not a .safetensors file: only safetensors are read (no pickle is ever loaded). "
            "Use the .safetensors version of the file, or convert it"
        )
    known = known_file(file_name)
    where = f"ComfyUI/models/{LAYER_MODEL_FOLDER}/"
    if known is None:
        hint = f" Put it in {where} or ComfyUI/models/{LORA_FOLDER}/"
    elif known.converted_from is not None:
        here = os.path.join(folder_paths.models_dir, known.folder)
        hint = (f" Download {known.converted_from} from {known.url} and convert it with"
                f" `python {CONVERT_SCRIPT} {known.converted_from} --out-dir {here}`")
    else:
        here = os.path.join(folder_paths.models_dir, known.folder)
        hint = (f" Download it from {known.url} into {where} (here: {here}),"
                f" or run `python {DOWNLOAD_SCRIPT} {known.name}`")
    raise FileNotFoundError(f"{file_name} is not in ComfyUI's {' or '.join(folders)} folders.{hint}, then refresh.")
