"""`make bench-gpu`'s script, run for real at a tiny size on the CPU (a smoke test: no GPU here, and
no timing is asserted): every case runs, the table prints, the JSON lands in the folder given."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from layerfusion_dev.bench_cases import FOREGROUND_CASES
from layerfusion_dev.paths import REPO

# one torch thread: on a busy machine two threads wait on each other (the depth1 sampling here ran 5-10x slower)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow  # the benchmark tool, not the pack: make test-all

CASES = {"limit", "fusion", "merged", "fusion_prior_pass", "sequential", "decode_batched", "decode_loop", "decode_off", "prior",
         *FOREGROUND_CASES}


def test_the_gpu_benchmark_runs_every_case_on_the_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "layerfusion_dev.bench_gpu", "--device", "cpu", "--arch", "depth1", "--latent", "8",
         "--steps", "1", "--repeats", "1", "--rank", "4", "--decode-size", "64", "--prior-tokens", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=ONE_THREAD,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "bench_gpu.json").read_text())
    assert set(results["cases"]) == CASES
    for case, measured in results["cases"].items():
        assert math.isfinite(measured["seconds"]) and measured["seconds"] > 0, case
        assert measured["tensor_peak"] is None, case  # no CUDA: no GPU memory measured
    assert results["image"] == 64 and results["device"].endswith("CPU")
    # every row of the shared table that the GPU bench measures (no peak RSS here); memory "n/a" without CUDA
    names = [row[0] for row in results["table"]]
    assert len(names) == 10 + 4 * 3 and all("RSS" not in name for name in names)
    assert "| LayerFusion / limit (3 streams, FG LoRA, no blend), step time (timed in turns) |" in done.stdout
    assert "| LayerFusion, step time added by foreground 4 / one foreground's step time per row |" in done.stdout
    assert "| 4 (6) |" in done.stdout and "| n/a / n/a |" in done.stdout  # the several-foreground table; no CUDA: no memory
    assert "transparent decode at 64px" in done.stdout and "structure prior at 256 tokens" in done.stdout
    assert (out / "bench_gpu.md").read_text().strip() == done.stdout.strip()  # the table printed is the one written
