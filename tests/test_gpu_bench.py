"""`python bench/gpu.py --out DIR --cpu-dry`: the GPU benchmark's whole path (models built and saved,
sweeps at several worker settings, HF and cold baselines, `pytest -m gpu`) on CPU with tiny
shapes. It writes its table and JSON with real values for what a CPU can measure and "n/a (CPU
dry run)" for what it cannot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from sweep_helpers import REPO, env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NA = "n/a (CPU dry run)"


def test_cpu_dry_run_writes_the_table_and_json(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--out", str(out), "--cpu-dry"],
                          cwd=tmp_path, env={**env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=540, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    table = (out / "BENCHMARKS.md").read_text()
    assert results["mode"] == "cpu-dry" and results["gpu"] == NA
    assert set(results["sources"]) >= {"trials/hour (end to end)", "GPU busy", "peak memory per worker",
                                       "pre-flight estimate", "model load cold / warm", "HF trials/hour"}

    arms = results["arms"]
    assert {(a["family"], a["arm"], a.get("workers_per_device")) for a in arms} == {
        ("a", "ours", 1), ("a", "ours", 2), ("a", "ours", "auto"), ("a", "hf", None), ("a", "cold", None),
        ("b", "ours", 1)}
    for arm in arms:
        assert not arm.get("error") and not arm.get("skipped"), arm
        assert arm["trials_finished"] > 0 and arm["trials_per_hour"] > 0 and arm["wall_s"] > 0, arm
    for arm in (a for a in arms if a["arm"] == "ours"):
        assert arm["workers"] == arm["workers_per_device"] or arm["workers_per_device"] == "auto" and arm["workers"] >= 1
        assert arm["trials_failed"] == 0 and arm["steady_trials_per_hour"] > 0
        assert arm["estimate_mb"] > 0 and arm["rows_truncated"] == 0  # every conversation fit seq_len
        peaks = arm["peak_memory_mb_per_worker"]
        assert 1 <= len(peaks) <= arm["workers"] and all(v > 0 for v in peaks.values())
        assert 1 <= len(arm["cold_loads_s"]) <= arm["workers"]  # one load per worker, the rest warm
        assert len(arm["cold_loads_s"]) + arm["warm_trials"] == arm["trials_finished"]
        assert "gpu_busy_pct" not in arm  # nothing sampled, nothing made up
    hf = next(a for a in arms if a["arm"] == "hf")
    assert len(hf["model_init_s"]) == hf["trials_finished"] + 1  # a fresh load per trial, plus Trainer's own
    assert results["summary"]["a"]["one_worker_vs_hf"] > 0 and results["summary"]["a"]["one_worker_vs_cold"] > 0

    tests = results["gpu_tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["rc"] == 0
    assert tests["skipped" if not torch.cuda.is_available() else "passed"] >= 6  # skipped with the reason on CPU

    for needle in ("## 1. Our sweep by worker setting", "## 2. Against Hugging Face", "## 3. GPU tests",
                   "## Where each figure comes from", "| tiny (1B stand-in) | auto |", NA):
        assert needle in table, needle
    assert "## 1. Our sweep by worker setting" in proc.stdout  # the table is printed too
