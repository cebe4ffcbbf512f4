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


def test_time_to_target_split_into_trials_and_seconds_per_trial(tmp_path: Path) -> None:
    bench = _load("quality_tolerance")
    Search = bench.Search
    # ours: 10 s a trial, the best at its 3rd trial; HF: 20 s a trial, best at its 2nd trial, and a
    # second seed that never reaches the narrow band (it counts with its whole search: 4 trials, 80 s)
    ours = [Search(0.0, [(10.0, 0.80), (20.0, 0.82), (30.0, 0.90)])] * 2
    hf = [Search(0.0, [(20.0, 0.80), (40.0, 0.895)]),
          Search(0.0, [(20.0, 0.70), (40.0, 0.80), (60.0, 0.81), (80.0, 0.85)])]
    text = bench.table({bench.OURS: ours, bench.HF: hf}, [0.5, 15])
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines()[4:]}
    # band 0.5 points: ours 3 trials / 30 s; HF (2 trials / 40 s + 4 trials / 80 s) / 2 = 3 trials / 60 s
    assert "| 1/2 | 3.0 | 60 | 20.0 |" in rows[("0.5 (0.8950)", bench.HF)]
    assert "**2.00x** = 1.00 x 2.00" in rows[("0.5 (0.8950)", bench.OURS)]
    # band 15 points: ours at its 1st trial, HF at its 1st and 2nd: the ratio is luck as well as cost
    assert "| 2/2 | 1.5 | 30 | 20.0 |" in rows[("15 (0.7500)", bench.HF)]
    assert "**3.00x** = 1.50 x 2.00" in rows[("15 (0.7500)", bench.OURS)]
    # the HF runs are read from the HF_RESULT line each process prints; pruned trials are left out
    work = tmp_path / "quality_hf_s0"
    work.mkdir()
    for i, trials in enumerate([[{"number": 0, "state": "COMPLETE", "complete": 50.0, "value": 0.8}],
                                [{"number": 1, "state": "PRUNED", "complete": 60.0, "value": None},
                                 {"number": 2, "state": "COMPLETE", "complete": 70.0, "value": 0.9}]]):
        (work / f"hf_search_{i}.log").write_text("noise\nHF_RESULT " + json.dumps({"trials": trials}) + "\n")
    assert [v for _, v in bench.hf_search(work).completed] == [0.8, 0.9]
