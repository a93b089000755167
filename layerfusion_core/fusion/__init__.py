"""LayerFusion itself as plain Python and tensors: its settings, the state and record of one
generation, the priors, masks and blends (docs/method.md), the prompts, and the mask pictures."""
