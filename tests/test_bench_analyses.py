"""The two benchmarks that need no training run end to end at tiny sizes: the race against the
reproduction on simulated seeds, and the pruner grid replayed on the committed learning curves. A
smoke check of the machinery, with one behaviour each that their committed tables rest on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_race_against_reproduction_on_simulated_seeds(tmp_path: Path) -> None:
    bench = _load("race_vs_reproduce")
    out = tmp_path / "race.md"
    assert bench.main(["--sims", "40", "--race-budgets", "6,12", "--seed-counts", "2", "--undropped", "12",
                       "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("| reproduce 2 x 2 seeds | 12.0 / 12 |", "| race, at most 12 runs |", "| seed pairs, 12 runs, nothing dropped |"):
        assert row in text, row
    assert "### three equal configs" in text
    # a config 3 seed SDs behind the best is dropped by the race's own rule within its rounds
    noise = bench.SeedNoise(0.0, 0.0, 1e-4, 0.0, "test")
    rng = np.random.default_rng(0)
    outcomes = [bench.simulate_race(noise, np.array([0.85, 0.82]), 24, 0.05, rng) for _ in range(50)]
    assert np.mean([1 in o["dropped"] for o in outcomes]) > 0.9
    assert all(o["winner"] == 0 for o in outcomes if o["separated"])


def test_pruner_grid_replayed_on_the_committed_curves(tmp_path: Path) -> None:
    bench = _load("pruning_frontier")
    out = tmp_path / "frontier.md"
    curves = [REPO / "bench" / "results" / f"pruning_curves_{name}.json" for name in ("demo", "sst2")]
    assert bench.main(["replay", "--curves", *map(str, curves), "--sweep-trials", "12", "--orders", "2",
                       "--out", str(out)]) == 0
    text = out.read_text()
    assert "(old default)" in text and "(default)" in text and "### Sweeps of 12 trials" in text
    # pruning from the first eval with nothing finished saves more steps than the guarded default
    pool = [{int(k): float(v) for k, v in c["evals"].items()} for c in json.loads(curves[0].read_text())["curves"][:12]]
    assert bench.replay_one(bench.OLD_DEFAULT, pool, 60)["saved"] > bench.replay_one(bench.DEFAULT, pool, 60)["saved"]
