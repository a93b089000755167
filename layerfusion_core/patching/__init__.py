"""The one place that touches ComfyUI's patch machinery (ModelPatcher clones, injections, weight
patches, wrappers, attention patches, transformer_options), one module per feature:

- `options`: the keys the patches meet ComfyUI under, and the one way a model's options change;
- `calls`: the rows of each UNet call (a DIFFUSION_MODEL wrapper), for branch LoRAs and LayerFusion;
- `branch_lora`: a LoRA on the rows of one branch, as forward hooks attached by a model injection;
- `layerfusion` and `attention`: LayerFusion's sampler wrapper, run handler, guard and attention patches;
- `holds`: what an inpainting mask holds in a LayerFusion run (LayerFusion Background), exactly;
- `layerdiffuse_conditional`: LayerDiffuse's conditional models;
- `model_info` and `hook_points`: what the patches read off a model, and the error when a patch did not run.

The maths they run are plain functions in `fusion` and `layout`.
"""
