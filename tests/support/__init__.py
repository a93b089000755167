"""Shared test and tooling support: where ComfyUI is, and a harness for a real ComfyUI server."""
