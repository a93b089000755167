"""The layer_model folder in ComfyUI's folder_paths, and the table of known files."""

from __future__ import annotations

import pytest

from layerfusion.layerfusion_core.weights import known_files


def test_layer_model_folder_keeps_extra_model_paths_entries(tmp_path):
    import folder_paths

    from_yaml = tmp_path / "shared_models" / "layer_model"
    from_yaml.mkdir(parents=True)
    (from_yaml / "layer_xl_transparent_attn.safetensors").write_bytes(b"")
    (from_yaml / "old_pickle.ckpt").write_bytes(b"")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"")
    folder_paths.add_model_folder_path("layer_model", str(from_yaml))  # what extra_model_paths.yaml does at startup
    folder_paths.add_model_folder_path("loras", str(tmp_path / "loras"))
    known_files.register_model_folders()
    paths = folder_paths.get_folder_paths("layer_model")
    assert str(from_yaml) in paths and any(p.endswith("models/layer_model") for p in paths)
    choices = known_files.lora_choices()
    assert choices.index("layer_xl_transparent_attn.safetensors") < choices.index("style.safetensors")
    assert "old_pickle.ckpt" not in choices  # only safetensors are offered
    assert known_files.resolve("style.safetensors") == str(tmp_path / "loras" / "style.safetensors")


def test_a_missing_known_file_says_where_to_get_it():
    with pytest.raises(FileNotFoundError, match=r"huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/"
                                                r"layer_xl_transparent_conv.safetensors into ComfyUI/models/layer_model/"):
        known_files.resolve("layer_xl_transparent_conv.safetensors")
    with pytest.raises(FileNotFoundError, match="is not in ComfyUI's layer_model or loras folders"):
        known_files.resolve("../../secrets.safetensors")


def test_known_files_table_is_consistent():
    names = [f.name for f in known_files.KNOWN_FILES]
    assert len(names) == len(set(names))
    attn = known_files.known_file("some/dir/layer_xl_transparent_attn.safetensors")
    assert attn.kind is known_files.FileKind.ATTENTION_LORA and attn.folder == "layer_model"


def test_names_come_only_from_the_folder_lists_never_from_paths(tmp_path):
    import folder_paths

    inside = tmp_path / "models" / "layer_model"
    inside.mkdir(parents=True)
    (inside / "old_pickle.ckpt").write_bytes(b"")
    outside = tmp_path / "models" / "outside.safetensors"  # exists, but in no folder list
    outside.write_bytes(b"")
    folder_paths.add_model_folder_path("layer_model", str(inside))
    for name in ("../outside.safetensors", str(outside), f"{inside}/../outside.safetensors", "..\\outside.safetensors"):
        with pytest.raises(FileNotFoundError, match="is not in ComfyUI's layer_model folders"):
            known_files.resolve(name, (known_files.LAYER_MODEL_FOLDER,))
    with pytest.raises(FileNotFoundError, match="not a .safetensors file: only safetensors are read"):
        known_files.resolve("old_pickle.ckpt", (known_files.LAYER_MODEL_FOLDER,))
