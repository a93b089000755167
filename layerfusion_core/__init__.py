"""LayerFusion's core: the maths as plain functions over tensors, the modules that hold weights,
and (in one module of its own) the code that touches ComfyUI's patch machinery.

Nothing here imports ComfyUI at module import time except that one module, so the maths can be
tested on plain tensors.
"""
