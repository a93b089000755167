"""UI-format (LiteGraph) workflows from their API-format twins, and back, using `/object_info`.

The shipped `example_workflows/*.json` (what users drag into ComfyUI and what its template
browser lists) are generated from `example_workflows/api/*.json` (what the tests run) by
`python -m layerfusion_dev.build_workflows`; the tests convert each UI file back and compare it with its twin.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CHECKPOINT_URL = "https://huggingface.co/SG161222/RealVisXL_V4.0/resolve/main/RealVisXL_V4.0.safetensors"
LAYERDIFFUSE_URL = "https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/{name}"
MODEL_INPUTS = {  # input name -> models folder, for the frontend's missing-model prompt
    "ckpt_name": "checkpoints", "lora_name": "layer_model", "decoder_name": "layer_model", "encoder_name": "layer_model",
    "model_name": "layer_model",
}
FLUX_MODELS = {  # file name -> (download URL, models folder) of the FLUX workflow's files (URLs not checked offline)
    "flux1-dev.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    "t5xxl_fp16.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    "ae.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae"),
    "layerlora.safetensors": ("https://huggingface.co/RedAIGC/Flux-version-LayerDiffuse/resolve/main/layerlora.safetensors", "loras"),
}
# Files no URL can give: converted by the user from a published pickle (scripts/convert_flux_transparent_vae.py).
# The frontend would save a download under the entry's name, so they get no properties.models entry.
CONVERTED_MODELS = {"vae_transparent_decoder_flux.safetensors", "vae_transparent_encoder_flux.safetensors"}


def _specs(info: dict[str, Any]) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, list(info["input"].get(section, {}))):
            out.append((name, info["input"][section][name]))
    return out


def is_widget(spec: list) -> bool:
    """A widget value, not a link: the basic widget types, a combo, or an input with no socket at all
    (Create Layered Image's COMPOSITOR: the Layer Editor's saved state, ``{}`` when none)."""
    kind = spec[0]
    socketless = len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("socketless"))
    return isinstance(kind, list) or kind in WIDGET_TYPES or socketless


def _widget_values(spec_name: str, spec: list, value: Any) -> list[Any]:
    values = [value]
    options = spec[1] if len(spec) > 1 else {}
    if options.get("control_after_generate"):
        values.append("fixed")
    if options.get("image_upload"):
        values.append("image")
    return values


def _model_entry(name: str, value: str) -> dict[str, str] | None:
    if value in FLUX_MODELS:
        url, directory = FLUX_MODELS[value]
        return {"name": value, "url": url, "directory": directory}
    if value in CONVERTED_MODELS:
        return None
    folder = MODEL_INPUTS.get(name)
    if folder is None:
        return None
    if folder == "checkpoints":
        return {"name": value, "url": CHECKPOINT_URL, "directory": folder}
    if not value.startswith(("layer_", "vae_transparent")):
        return None  # a user's own LoRA: nothing to download
    return {"name": value, "url": LAYERDIFFUSE_URL.format(name=value), "directory": folder}


def _depths(api: dict[str, Any]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def api_to_ui(api: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The LiteGraph workflow of an API graph (numeric ids in the API graph's order)."""
    ids = {node_id: i + 1 for i, node_id in enumerate(api)}
    depth = _depths(api)
    links: list[list] = []
    nodes: dict[str, dict[str, Any]] = {}
    column_y: dict[int, int] = {}
    for node_id, node in api.items():
        info = object_info[node["class_type"]]
        inputs, widgets, models = [], [], []
        for name, spec in _specs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list):  # a link
                link_id = len(links) + 1
                source = ids[value[0]]
                kind = object_info[api[value[0]]["class_type"]]["output"][value[1]]
                links.append([link_id, source, value[1], ids[node_id], len(inputs), kind])
                entry = {"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO", "link": link_id}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif is_widget(spec) and value is not None:
                widgets += _widget_values(name, spec, value)
                model = _model_entry(name, value) if isinstance(value, str) else None
                if model:
                    models.append(model)
            elif not is_widget(spec) and value is None and name in info["input"].get("required", {}):
                inputs.append({"name": name, "type": spec[0], "link": None})
        outputs = [{"name": out_name, "type": kind, "links": [], "slot_index": slot}
                   for slot, (kind, out_name) in enumerate(zip(info["output"], info["output_name"]))]
        col = depth[node_id]
        y = column_y.get(col, 60)
        height = 60 + 24 * (len(widgets) + max(len(inputs), len(outputs)))
        column_y[col] = y + height + 40
        properties: dict[str, Any] = {"Node name for S&R": node["class_type"]}
        if models:
            properties["models"] = models
        nodes[node_id] = {
            "id": ids[node_id], "type": node["class_type"], "pos": [60 + 380 * col, y], "size": [320, height],
            "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs, "properties": properties,
            "widgets_values": widgets,
        }
        title = node.get("_meta", {}).get("title")
        if title:
            nodes[node_id]["title"] = title
    for link_id, source, slot, _target, _tslot, _kind in links:
        source_node = next(n for n in nodes.values() if n["id"] == source)
        source_node["outputs"][slot]["links"].append(link_id)
    for order, node_id in enumerate(sorted(api, key=lambda n: (depth[n], ids[n]))):
        nodes[node_id]["order"] = order
    return {
        "last_node_id": len(api), "last_link_id": len(links), "nodes": list(nodes.values()), "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """An API graph from a LiteGraph workflow (numeric ids as strings), as the frontend queues it."""
    links = {link[0]: link for link in ui["links"]}
    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        info = object_info[node["type"]]
        linked = {entry["name"]: links[entry["link"]] for entry in node.get("inputs", []) if entry.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, spec in _specs(info):
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
            elif is_widget(spec) and values:
                count = len(_widget_values(name, spec, None))
                inputs[name] = values[0]
                values = values[count:]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def widget_problems(api: dict[str, Any], object_info: dict[str, Any], models_offered: set[str]) -> list[str]:
    """Widget values a node would not accept (ranges, types, choices); file names of models the
    workflow offers to download (``models_offered``) count as accepted."""
    problems = []
    for node_id, node in api.items():
        for name, spec in _specs(object_info[node["class_type"]]):
            value = node["inputs"].get(name)
            if value is None or isinstance(value, list) or not is_widget(spec):
                continue
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
            where = f"{node['class_type']} (node {node_id}) {name}={value!r}"
            if choices is not None:
                if value not in choices and value not in models_offered and not options.get("image_upload"):
                    problems.append(f"{where}: not one of {choices[:5]}")
            elif kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
                    problems.append(f"{where}: not a number of type {kind}")
                elif value < options.get("min", float("-inf")) or value > options.get("max", float("inf")):
                    problems.append(f"{where}: outside {options.get('min')}..{options.get('max')}")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a boolean")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a string")
    return problems
