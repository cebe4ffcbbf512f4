"""Search → race → replicate (the crossed design, asked for explicitly: paired is the default, tested in
tests/test_paired_design.py) → report on a real (tiny) sweep: the reproducibility table, the
significance of the winner's lead, the bitwise determinism check, the reproduction's seeds apart
from the race's, and the report logged on the MLflow parent run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from sweep_helpers import REPO, TINY, env, mlflow_client, only_study, run_sweep

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_bert_dir):
    cwd = tmp_path_factory.mktemp("reproduce")
    run_sweep(cwd, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.pruner=none", "train.learning_rate=choice(0.002, 0.02, 0.2)",
              "hydra.sweeper.reproduce.top_k=2", "hydra.sweeper.reproduce.n_seeds=2",
              "hydra.sweeper.reproduce.design=crossed",
              "hydra.sweeper.race.enabled=true", "hydra.sweeper.race.top_k=2", "hydra.sweeper.race.max_runs=4")
    return cwd


def test_sweep_reruns_the_top_configs_with_fresh_seeds(reproduced):
    study = only_study(reproduced)
    repro = only_study(reproduced, suffix="--reproduce")
    trials = repro.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 * 2 * 2 + 2  # top-2 × (2 init × 2 data-order seeds, crossed) + determinism pair
    assert {t.user_attrs["seed_kind"] for t in trials} == {"crossed", "determinism"}
    for config in {t.user_attrs["replicates_trial"] for t in trials}:
        cells = {(t.user_attrs["seed"], t.user_attrs["data_seed"]) for t in trials
                 if t.user_attrs["replicates_trial"] == config and t.user_attrs["seed_kind"] == "crossed"}
        assert len(cells) == 4 and len({s for s, _ in cells}) == 2 and len({d for _, d in cells}) == 2
    # no replicate ran on a seed the race ran with (both draw upward from the same base): the race
    # picked its winner on those seeds, and the reproduced mean must not carry that luck
    race = only_study(reproduced, suffix="--race")
    race_seeds = {t.user_attrs[k] for t in race.trials for k in ("seed", "data_seed") if k in t.user_attrs}
    drawn = {t.user_attrs[k] for t in trials if t.user_attrs["seed_kind"] == "crossed" for k in ("seed", "data_seed")}
    search_seeds = {t.user_attrs[k] for t in study.trials for k in ("seed", "data_seed") if k in t.user_attrs}
    assert race_seeds and drawn and not drawn & race_seeds and not drawn & search_seeds
    best_two = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)[:2]
    assert {t.user_attrs["replicates_trial"] for t in trials} == {t.number for t in best_two}
    for trial in trials:
        original = study.trials[trial.user_attrs["replicates_trial"]]
        kind = trial.user_attrs["seed_kind"]
        assert (trial.user_attrs["seed"] == original.user_attrs["seed"]) == (kind in ("data_seed", "determinism"))
        assert (trial.user_attrs["data_seed"] == original.user_attrs["data_seed"]) == (kind in ("seed", "determinism"))
    # Replicates are also scored on the held-out split (data=demo: test_split=test); search trials never are.
    assert all("test_accuracy" in t.user_attrs["metrics"] for t in trials)
    assert not any(k.startswith("test_") for t in study.trials for k in t.user_attrs.get("metrics", {}))
    # The replicates are child runs of the same MLflow parent, tagged with the config they replicate.
    client = mlflow_client(reproduced)
    parent = study.user_attrs["mlflow_parent_run_id"]
    held_out = client.get_run(parent).data.metrics
    assert 0.0 <= held_out["winner_test_mean"] <= 1.0 and held_out["winner_test_n"] == 4
    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["trial.replicates_trial"] == str(trial.user_attrs["replicates_trial"])


def test_determinism_check_is_bitwise_on_cpu(reproduced):
    repro = only_study(reproduced, suffix="--reproduce")
    pair = [t for t in repro.trials if t.user_attrs.get("seed_kind") == "determinism"]
    assert len(pair) == 2
    assert pair[0].user_attrs["adapter_sha256"] == pair[1].user_attrs["adapter_sha256"]
    assert pair[0].user_attrs["metrics"] == pair[1].user_attrs["metrics"]
    assert all(t.user_attrs["deterministic"] == "strict" for t in pair)  # CPU: every op deterministic, enforced


def test_report_has_the_reproducibility_section_and_lands_on_the_parent(reproduced):
    out = reproduced / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--out", str(out)], cwd=reproduced, env={
        **env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    for heading in ("Leaderboard", "Hyperparameter importance", "Would more trials help?", "Reproducibility",
                    "winner's curse", "Rank stability", "Is the winner's lead significant?",
                    "Variance by source of randomness", "Determinism check"):
        assert heading in md, heading
    assert re.search(r"95% CI", md) and "Kendall" in md and re.search(r"p[- ]value|p =", md)
    assert "reproduced every metric bit for bit" in md and "Adapter SHA-256 identical in 2 of 2" in md
    # the crossed-seed variance table, with intervals and n (8 runs, pooled df 1 + 1 per source)
    assert "Two-way random-effects variance components" in md and "n = 8 runs" in md and "2 × 2" in md
    table = re.search(r"\| source \| n runs \| variance \| 95% CI low \| 95% CI high \| share \| df \|\n.*\n"
                      r"(\| init seed \| 8 \| .*\| 2 \|)\n(\| data order \| 8 \| .*\| 2 \|)\n"
                      r"(\| interaction \+ residual \| 8 \| .*\| 2 \|)", md)
    assert table, md[md.find("Variance by source"):][:1500]
    assert ("Cannot tell at this n" in md) or ("contributes more variance" in md)
    # the per-config means carry the crossed grid's interval and n; the lead is tested on paired cells
    assert "One-sided paired test of the winner's lead" in md and "paired on the 4 seed cells both ran (n = 4)" in md
    # with the race on, seed / data_seed leave the search space (race.search_seeds=false): no tuned-seed warning
    assert "optimistically biased" not in md
    assert "Held-out test (data.test_split)" in md and "held-out test mean" in md
    # issue 25: the raced winner heads the report with n; the design's power sits beside the verdict;
    # no interval is zero-width (n runs with one value read "no variation seen in n runs")
    assert "Winner (seed race)" in md and re.search(r"Winner \(seed race\).*n = 2", md)
    assert "Power of this 2 × 2 crossed grid" in md or "Power of this design: not estimable" in md
    assert not re.search(r"\[(-?[0-9.]+), \1\]", md) and not re.search(r"CI (-?[0-9.]+) to \1\b", md)
    for sentence in re.findall(r"95% CI -?[0-9.]+ to [^)]*\)", md):
        assert "n = " in sentence, sentence
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and not re.search(r"""(src|href)=["']https?://""", html)
    client = mlflow_client(reproduced)
    parent = only_study(reproduced).user_attrs["mlflow_parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html"} <= logged


def test_reproduce_cli_on_an_existing_study(reproduced):
    proc = subprocess.run([sys.executable, "-m", "analysis.reproduce", "--top-k", "3", "--n-seeds", "1",
                           "--design", "one_at_a_time", "--seed-kinds", "seed",
                           "--no-determinism-check"], cwd=reproduced,
                          env={**env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    repro = only_study(reproduced, suffix="--reproduce")
    third = sorted(only_study(reproduced).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)[2]
    assert [t for t in repro.get_trials(states=(TrialState.COMPLETE,))
            if t.user_attrs["replicates_trial"] == third.number]
