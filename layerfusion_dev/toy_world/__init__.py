"""The toy world: a tiny SDXL-architecture model trained on this machine on synthetic layered scenes,
where LayerFusion's claims can be measured (dev tooling; the pack's runtime never imports it).

- `scenes`: the world (seeded layered scenes and their prompts);
- `..testnodes.toy_models`: the hand-set text encoder and VAE, the UNet's config, the files and how they load (in
  testnodes, so the server's toy nodes use it too);
- `train`: `make toy-world` (base UNet, then the foreground LoRA, `lora`), and LoRA-only experiments (`--base-from`);
- `measure`: LayerFusion on against blending off, claims (a)-(f); `pair_measure` (two objects) and `photo_measure`
  (the user's own background) the same for their cases; `pixels` what the three share;
- `probe`: where the priors sit, per block and noise level; `states`: a training stage's saved state.
"""
