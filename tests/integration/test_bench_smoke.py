"""`make bench`'s script, run for real at a tiny size on a few cases (a smoke test: no timing is
asserted; the decoder's cases run in the GPU bench's smoke test): each case in its own process,
results.json in the folder given, and neither the README's table nor bench/results.json touched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from layerfusion_dev.bench import README_MARKERS
from layerfusion_dev.bench_cases import FOREGROUND_CASES
from layerfusion_dev.paths import REPO

# one torch thread: on a busy machine two threads wait on each other (the depth1 sampling here ran 5-10x slower)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow  # the benchmark tool, not the pack: make test-all


def _kept() -> tuple[str, str | None]:
    """README's bench table (the part the bench writes: others may edit the rest meanwhile) and the digest of bench/results.json."""
    start, end = README_MARKERS
    table = (REPO / "README.md").read_text().split(start, 1)[-1].split(end, 1)[0]
    results = REPO / "bench" / "results.json"
    return table, hashlib.sha256(results.read_bytes()).hexdigest() if results.is_file() else None


def test_the_cpu_benchmark_runs_chosen_cases_into_the_folder_given(tmp_path):
    kept = _kept()
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "layerfusion_dev.bench", "--arch", "depth1", "--cases", "in_turns", "fusion", "prior", "foregrounds",
         "--latent", "8", "--steps", "1", "--repeats", "1", "--rank", "4", "--decode-size", "64", "--prior-tokens", "256",
         "--out", str(out), "--no-readme"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=ONE_THREAD,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _kept() == kept
    results = json.loads((out / "results.json").read_text())
    assert set(results["arch"]) == {"depth1"} and set(results["arch"]["depth1"]) == {"in_turns", "fusion", "foregrounds"}
    assert set(results["arch"]["depth1"]["in_turns"]) == {"limit", "fusion", "merged", "steps"}
    foregrounds = results["arch"]["depth1"]["foregrounds"]
    assert set(foregrounds) == {*FOREGROUND_CASES, "steps"}
    for case in FOREGROUND_CASES:  # timed in turns, and each its tensor peak in the same process
        assert foregrounds[case]["seconds"] > 0 and foregrounds[case]["tensor_peak"] > 0, case
    peaks = [foregrounds[f"fusion_k{k}"]["tensor_peak"] for k in (1, 2, 3, 4)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]  # each foreground is a row more
    fusion = results["arch"]["depth1"]["fusion"]
    assert fusion["rss_peak"] > 0 and fusion["tensor_peak"] > 0 and "seconds" not in fusion  # its time is in_turns'
    assert set(results["shared"]) == {"prior"} and results["shared"]["prior"]["tensor_peak"] > 0
    assert results["sizes"]["depth1"]["latent"] == 8 and results["sizes"]["shared"]["decode_size"] == 64
    # the rows these cases fill: the step times (in turns), the prior and the several-foreground rows (4 per K > 1);
    # the memory rows of one foreground need the limit's process
    parts = done.stdout.split("\n\n")  # the head, the table, the several-foreground table's title and table
    ratios, per_k = parts[1].splitlines()[2:], parts[3].splitlines()[2:]
    assert len(ratios) == 3 + 4 * 3, done.stdout
    assert ratios[0].startswith("| tiny: LayerFusion / limit (3 streams, FG LoRA, no blend), step time (timed in turns) |")
    assert "| <= 1.10 |" in ratios[0] and ratios[-1].startswith("| structure prior at 256 tokens, 10 heads: tensor peak")
    assert ratios[2].startswith("| tiny: LayerFusion / limit, 2 foregrounds (4 rows), step time (timed in turns) | ")
    assert ratios[-2].startswith("| tiny: tensor peak added by foreground 4, LayerFusion / limit | ")
    assert parts[2].startswith("tiny: several foregrounds")
    assert [row.split(" | ")[0] for row in per_k] == ["| 1 (3)", "| 2 (4)", "| 3 (5)", "| 4 (6)"]
