"""`make bench-gpu`'s script, run for real at a tiny size on the CPU (a smoke test: no GPU here, and
no timing is asserted): every case runs, the table prints, the JSON lands in the folder given."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from layerfusion_dev.paths import REPO

CASES = {"limit", "fusion", "merged", "fusion_prior_pass", "sequential", "decode_batched", "decode_loop", "prior"}


def test_the_gpu_benchmark_runs_every_case_on_the_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "layerfusion_dev.bench_gpu", "--device", "cpu", "--arch", "depth1", "--latent", "8",
         "--steps", "1", "--repeats", "1", "--rank", "4", "--decode-size", "64", "--prior-tokens", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "bench_gpu.json").read_text())
    assert set(results["cases"]) == CASES
    for case in ("limit", "fusion", "merged"):
        assert math.isfinite(results["cases"][case]["seconds_per_step"]) and results["cases"][case]["seconds_per_step"] > 0
    for case in ("fusion_prior_pass", "sequential", "decode_batched", "decode_loop", "prior"):
        assert results["cases"][case]["seconds"] > 0
    assert results["image"] == 64 and results["device"].endswith("CPU")
    assert len(results["table"]) == 8 and "| LayerFusion step time / limit" in done.stdout
    assert (out / "bench_gpu.md").read_text().strip() == done.stdout.strip()  # the table printed is the one written
