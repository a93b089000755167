"""Random stand-ins for the LayerDiffuse weight files: the real tensor names, with shapes that fit
the model they are made for, random seeded values, written as safetensors.

The layout comes from `layerfusion_dev/data/layerdiffuse_tensors.json` (a copy of the team's data file, the
names and shapes of the real downloads). Files whose shapes do not depend on the UNet (the
transparent decoder and encoder) get exactly the real shapes; the attention LoRA keeps every real
key whose target weight exists in the given UNet, with that weight's shape and a chosen rank.

The real-size files (the SDXL and FLUX transparent decoders, ~200 MB each, seconds to draw) are
drawn and written once per process (a test session): `cached_file` keeps each in a temporary
folder of the process, and the writers below copy it where it is asked for.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import torch

LAYOUT_FILE = Path(__file__).resolve().parent.parent / "data" / "layerdiffuse_tensors.json"
ATTN_FILE = "layer_xl_transparent_attn.safetensors"
DECODER_FILE = "vae_transparent_decoder.safetensors"
ENCODER_FILE = "vae_transparent_encoder.safetensors"
REAL_ATTN_RANK = 256
_PATCH_KEY = re.compile(r"^(?P<target>.+)::(?P<kind>lora|diff)::(?P<index>\d+)$")


@lru_cache(maxsize=1)
def layout() -> dict[str, dict[str, list[int]]]:
    """File name -> {tensor name: shape} of the real LayerDiffuse files."""
    return json.loads(LAYOUT_FILE.read_text())["files"]


def _random(shape: list[int] | torch.Size, gen: torch.Generator, scale: float) -> torch.Tensor:
    return (torch.randn(list(shape), generator=gen) * scale).to(torch.float16)


def exact_standin(file_name: str, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Every tensor of ``file_name`` with its real shape (fp16, like the downloads)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: _random(shape, gen, scale) for name, shape in sorted(layout()[file_name].items())}


_CACHE: dict[str, Path] = {}


@lru_cache(maxsize=1)
def _cache_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="layerfusion-standins-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def cached_file(key: str, make: Callable[[], dict[str, torch.Tensor]]) -> Path:
    """The safetensors file of ``make()``'s tensors, written the first time ``key`` is asked for
    in this process and kept (never to be written to: copy it) until the process ends."""
    if key not in _CACHE:
        from safetensors.torch import save_file

        path = _cache_dir() / f"{len(_CACHE)}.safetensors"
        save_file(make(), str(path))
        _CACHE[key] = path
    return _CACHE[key]


def exact_standin_file(file_name: str, seed: int = 0) -> Path:
    """`exact_standin(file_name, seed)` as a file, drawn once per process (read-only: copy it)."""
    return cached_file(f"exact {file_name} {seed}", lambda: exact_standin(file_name, seed=seed))


def load_exact_standin(file_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of `exact_standin(file_name, seed)` (the same values), read from the file drawn
    once per process: a fresh dict of fresh tensors each call."""
    from safetensors.torch import load_file

    return load_file(str(exact_standin_file(file_name, seed)))


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def attn_lora_standin(
    unet_shapes: Mapping[str, torch.Size], rank: int = 8, seed: int = 0, scale: float = 0.05
) -> dict[str, torch.Tensor]:
    """The attention LoRA for a UNet whose state dict (``diffusion_model.``-prefixed keys) has
    ``unet_shapes``: index 0 (up) ``[out, rank]``, index 1 (down) ``[rank, in]``."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(layout()[ATTN_FILE]):
        match = _PATCH_KEY.match(name)
        if match is None or match["target"] not in unet_shapes:
            continue
        rows, cols = unet_shapes[match["target"]][:2]
        shape = [rows, rank] if match["index"] == "0" else [rank, cols]
        out[name] = _random(shape, gen, scale)
    return out


def kohya_lora_standin(model_patcher, rank: int = 4, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """An ordinary (kohya-named) LoRA on every attention projection of ``model_patcher``'s UNet,
    named through ComfyUI's own key map, with an alpha per layer."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    shapes = model_patcher.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for prefix, target in sorted(key_map.items()):
        if not prefix.startswith("lora_unet_") or not re.search(r"attn[12]_to_(q|k|v|out_0)$", prefix):
            continue
        rows, cols = shapes[target].shape
        out[f"{prefix}.lora_up.weight"] = _random([rows, rank], gen, scale)
        out[f"{prefix}.lora_down.weight"] = _random([rank, cols], gen, scale)
        out[f"{prefix}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return out


def unet_shapes(model_patcher) -> dict[str, torch.Size]:
    """``diffusion_model.``-prefixed state-dict shapes of a ComfyUI ModelPatcher's UNet."""
    return {f"diffusion_model.{k}": v.shape for k, v in model_patcher.model.diffusion_model.state_dict().items()}


def write_standins(layer_model_dir: Path, shapes: Mapping[str, torch.Size], rank: int = 8, seed: int = 0,
                   decoder: bool = True) -> dict[str, Path]:
    """Write the attention LoRA, decoder and encoder stand-ins into ``layer_model_dir`` (the
    ~200 MB decoder only with ``decoder``: for what decodes or lists it)."""
    from safetensors.torch import save_file

    layer_model_dir.mkdir(parents=True, exist_ok=True)
    paths = {ATTN_FILE: layer_model_dir / ATTN_FILE}
    save_file(attn_lora_standin(shapes, rank=rank, seed=seed), str(paths[ATTN_FILE]))
    if decoder:
        paths[DECODER_FILE] = _copy(exact_standin_file(DECODER_FILE, seed + 1), layer_model_dir / DECODER_FILE)
    paths[ENCODER_FILE] = _copy(exact_standin_file(ENCODER_FILE, seed + 2), layer_model_dir / ENCODER_FILE)
    return paths


CONDITIONAL_FILES = {  # name -> condition latents its input conv takes
    "layer_xl_fg2ble.safetensors": 1, "layer_xl_bg2ble.safetensors": 1,
    "layer_xl_fgble2bg.safetensors": 2, "layer_xl_bgble2fg.safetensors": 2,
}


def conditional_standin(shapes: Mapping[str, torch.Size], conditions: int, rank: int = 4, seed: int = 0,
                        scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A conditional model for a UNet with ``shapes``: the input conv's delta widened by 4 channels
    per condition latent (frozen-patcher ``diff``) and the attention LoRA's layout."""
    gen = torch.Generator().manual_seed(seed + 100)
    conv = "diffusion_model.input_blocks.0.0.weight"
    out, cin, kh, kw = shapes[conv]
    tensors = attn_lora_standin(shapes, rank=rank, seed=seed, scale=scale)
    tensors[f"{conv}::diff::0"] = _random([out, cin + 4 * conditions, kh, kw], gen, scale * 4)
    return tensors


def write_conditional_standins(layer_model_dir: Path, shapes: Mapping[str, torch.Size], seed: int = 0) -> dict[str, Path]:
    from safetensors.torch import save_file

    layer_model_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (name, conditions) in enumerate(CONDITIONAL_FILES.items()):
        paths[name] = layer_model_dir / name
        save_file(conditional_standin(shapes, conditions, seed=seed + i), str(paths[name]))
    return paths


FLUX_PTH_LAYOUT = "TransparentVAE.pth (FLUX)"  # the layout's key for the published pickled file
FLUX_DECODER_FILE = "vae_transparent_decoder_flux.safetensors"  # what the converter writes
FLUX_ENCODER_FILE = "vae_transparent_encoder_flux.safetensors"
FLUX_VAE_STANDIN = {"sd_vae.decoder.conv_in.weight": [8, 16, 3, 3], "sd_vae.encoder.conv_out.weight": [32, 8, 3, 3]}  # a token sd_vae.*


def flux_part_standin(prefix: str, seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The FLUX file's ``decoder.`` or ``encoder.`` tensors (real shapes), without the prefix."""
    gen = torch.Generator().manual_seed(seed)
    return {name[len(prefix):]: _random(shape, gen, scale).to(dtype)
            for name, shape in sorted(layout()[FLUX_PTH_LAYOUT].items()) if name.startswith(prefix)}


def flux_pth_standin(seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in of the published TransparentVAE.pth state dict: decoder.*, encoder.* (real names
    and shapes, bfloat16 like the download) and a token sd_vae.* (the real file holds the FLUX VAE)."""
    tensors = {f"decoder.{k}": v for k, v in flux_part_standin("decoder.", seed, dtype=torch.bfloat16).items()}
    tensors.update({f"encoder.{k}": v for k, v in flux_part_standin("encoder.", seed + 1, dtype=torch.bfloat16).items()})
    gen = torch.Generator().manual_seed(seed + 2)
    tensors.update({k: _random(shape, gen, 0.05).to(torch.bfloat16) for k, shape in FLUX_VAE_STANDIN.items()})
    return tensors


def write_flux_standins(layer_model_dir: Path, seed: int = 0) -> dict[str, Path]:
    """The two converted FLUX files (as scripts/convert_flux_transparent_vae.py writes them) in ``layer_model_dir``."""
    layer_model_dir.mkdir(parents=True, exist_ok=True)
    sources = {FLUX_DECODER_FILE: flux_part_file("decoder.", seed), FLUX_ENCODER_FILE: flux_part_file("encoder.", seed + 1)}
    return {name: _copy(source, layer_model_dir / name) for name, source in sources.items()}


def flux_part_file(prefix: str, seed: int = 0) -> Path:
    """`flux_part_standin(prefix, seed)` (fp16) as a file, drawn once per process (read-only: copy it)."""
    return cached_file(f"flux {prefix} {seed}", lambda: flux_part_standin(prefix, seed))


def load_flux_part_standin(prefix: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of `flux_part_standin(prefix, seed)` (fp16), read from the file drawn once per process."""
    from safetensors.torch import load_file

    return load_file(str(flux_part_file(prefix, seed)))


def flux_lora_standin(model_patcher, rank: int = 4, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A diffusers-format FLUX LoRA (``transformer.<block>.lora_A/lora_B.weight``, the format of
    LayerDiffuse's layerlora.safetensors) on every whole-weight linear layer ComfyUI's own FLUX key
    map names for ``model_patcher``'s model (fused q/k/v slices are left out: their targets are tuples)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    shapes = model_patcher.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for prefix, target in sorted(key_map.items()):
        if not prefix.startswith("transformer.") or not isinstance(target, str) or target not in shapes or shapes[target].ndim != 2:
            continue
        rows, cols = shapes[target].shape
        out[f"{prefix}.lora_A.weight"] = _random([rank, cols], gen, scale)
        out[f"{prefix}.lora_B.weight"] = _random([rows, rank], gen, scale)
    return out
