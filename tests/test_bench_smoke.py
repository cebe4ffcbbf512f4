"""The benchmark suite's smallest case (`python bench/run.py --smoke`) runs end to end and writes
every table and the headline numbers. A smoke check of the machinery: no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLES = ("## 1. Per-trial overhead", "## 2. Sweep throughput", "## 3. Pruning pays", "## 4. Search quality",
          "## 5. Worker scaling", "## 6. Memory", "## 7. Pruning regret")
KEYS = ("overhead_ratio", "throughput_ratio_vs_cold", "throughput_ratio_vs_hf", "pruning_speedup")
REGRET_KEYS = ("pruning_regret_trials", "pruning_regret_points", "pruning_compute_saved", "time_to_target_ratio_vs_hf")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bench_smoke_writes_all_tables(tmp_path: Path) -> None:
    committed = [REPO / "BENCHMARKS.md", REPO / "bench" / "results.json"]
    before = {p: p.stat().st_mtime for p in committed if p.exists()}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in TABLES:
        assert heading in text, heading
    assert "**Failed:**" not in text
    assert "| torch |" in text and "| CPU |" in text
    results = json.loads((tmp_path / "results.json").read_text())
    for key in KEYS:
        assert isinstance(results[key], (int, float)) and results[key] > 0, (key, results[key])
    for key in REGRET_KEYS:
        assert isinstance(results[key], (int, float)) and results[key] >= 0, (key, results[key])
    assert results["mode"] == "smoke"
    assert {p: p.stat().st_mtime for p in committed if p.exists()} == before  # --out leaves them alone
