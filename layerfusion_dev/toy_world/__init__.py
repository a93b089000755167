"""The toy world: a tiny SDXL-architecture model trained on this machine on synthetic layered scenes,
where LayerFusion's claims can be measured (dev tooling; the pack's runtime never imports it).

- `scenes`: the world (seeded layered scenes and their prompts);
- `..testnodes.toy_models`: the hand-set text encoder and VAE, the UNet's config, the files and how they load (in
  testnodes, so the server's toy nodes use it too);
- `train`: `make toy-world` (base UNet, then the foreground LoRA);
- `measure`: LayerFusion on against blending off, claims (a)-(f).
"""
