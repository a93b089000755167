"""Development tooling that the tests and the `make` targets share: where the ComfyUI host is and how
it is set up (`bootstrap`, stdlib only), the real ComfyUI server harness, the example workflows, the
tiny random-weight models and weight-file stand-ins (`testnodes`, also loaded as a custom node by
test servers), the demo and the benchmarks. Never imported by the pack itself.

Run its tools from the repository root as modules, e.g. ``python -m layerfusion_dev.demo`` (the
Makefile does).
"""
