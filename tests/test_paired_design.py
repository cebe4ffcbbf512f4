"""The paired reproduction design (the default: `hydra.sweeper.reproduce.design=paired`, `--design paired`):
every reproduced config on the same S² fresh (init seed, data seed) pairs. Its claims, by seeded
simulation through the product's own functions: the lead test beats Welch on as many runs at the
measured seed-luck sharing and keeps its level, the held-out interval covers, and the plan never
reuses a seed the search ran with."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.stats as st
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from omegaconf import OmegaConf

from analysis import sections
from analysis.reproducibility import held_out, lead_significance, per_config_summary
from analysis.report import build_report
from analysis.stats import lead_power, paired_lead_test
from sweeps.preflight import check_sweeper_settings
from sweeps.reproduce import FRESH_SEED_BASE, parse_args, plan_replicates
from sweeps.search.samplers import SweeperConfigError
from sweeps.search.space import parse_search_space
from sweeps.sweeper_config import LoraOptunaSweeperConf, ReproduceConf

RHO = 0.25  # the share of a seed pair's luck two configs have in common (SST-2 reproduction, bench/results)


def _paired_study(rng, n_seeds: int, means: dict[int, float], rho: float = RHO, sd: float = 1.0,
                  var_init: float = 0.0, var_data: float = 0.315, var_resid: float = 0.685):
    """Replicates of configs on the same S² fresh seed pairs: a run = mean + init-seed effect +
    data-order effect + residual (SST-2's measured mix by default), each effect shared by the
    configs with correlation rho; the held-out test score shares the run's seed effects."""
    n = n_seeds**2
    shared = [rng.standard_normal(n) for _ in range(3)]
    reps, repro = [], []
    for config, mean in means.items():
        parts = [math.sqrt(rho) * c + math.sqrt(1 - rho) * rng.standard_normal(n) for c in shared]
        seeds = mean + sd * (math.sqrt(var_init) * parts[0] + math.sqrt(var_data) * parts[1])
        val = seeds + sd * math.sqrt(var_resid) * parts[2]
        test = seeds + sd * math.sqrt(var_resid) * rng.standard_normal(n)
        for k in range(n):
            number = len(reps)
            reps.append({"config": config, "sweep_value": mean + sd, "value": val[k], "seed": FRESH_SEED_BASE + k,
                         "data_seed": FRESH_SEED_BASE + n + k, "seed_kind": "paired", "number": number,
                         "sweep_seed": 1.0, "sweep_data_seed": 2.0})
            repro.append({"number": number, "metric.test_accuracy": test[k]})
    return pd.DataFrame(reps), pd.DataFrame(repro)


def test_paired_lead_test_on_3x3_pairs_beats_welch_on_as_many_runs_and_keeps_its_level():
    """2-SD lead, 9 pairs per config (18 runs) at rho = 0.25: the report's paired test finds it at
    least as often as Welch on 18 independent runs, and with no lead rejects at most alpha.
    bench/results/lead_power.md: paired 99.7%, Welch 99.1%, the crossed 3 x 3 grid 78.6%.

    Both tests near 100% differ by a few studies in a thousand, so the head-to-head runs 20,000
    studies through `lead_power` (the report's power simulation); that its paired branch is the
    very test `lead_significance` reports is checked on the studies simulated end to end."""
    rng = np.random.default_rng(2525)
    studies = 300
    found, null, backwards = [], [], []
    for study in range(studies):
        reps = _paired_study(rng, 3, {1: 2.0, 2: 0.0})[0]
        sig = lead_significance(reps, 1, 2, maximize=True, n_boot=10)
        assert sig["test"] == "paired" and sig["n_cells"] == 9
        found.append(sig["p_a_better"] < 0.05)
        if study < 20:  # the report's test is the paired t-test on the 9 per-pair differences
            a, b = (reps[reps.config == c].sort_values("seed")["value"].to_numpy() for c in (1, 2))
            assert sig["p_a_better"] == pytest.approx(st.ttest_rel(a, b, alternative="greater").pvalue)
            assert paired_lead_test(a - b, maximize=True)["p_better"] == pytest.approx(sig["p_a_better"])
        sig = lead_significance(_paired_study(rng, 3, {1: 0.0, 2: 0.0})[0], 1, 2, maximize=True, n_boot=10)
        null.append(sig["p_a_better"] < 0.05)
        if study % 3 == 0:  # a runner-up 1 SD better is never reported as a significant lead of the winner
            sig = lead_significance(_paired_study(rng, 3, {1: 0.0, 2: 1.0})[0], 1, 2, maximize=True, n_boot=10)
            backwards.append(sig["p_a_better"] < 0.05)
    assert np.mean(found) >= 0.98 and not any(backwards)
    assert np.mean(null) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / studies)  # an exact test: 5% up to chance
    # head to head on 20,000 studies: one pair's difference has variance 2 (1 - rho) of a run's
    size, paired = lead_power("paired", 9, [2 * (1 - RHO)], [0.0, 2.0], sims=20_000, seed=1)
    welch = lead_power("welch", 9, [1.0], [2.0], sims=20_000, seed=2)[0]
    assert paired >= welch and size <= 0.053


@pytest.mark.parametrize("n_seeds", [2, 3])
def test_held_out_interval_covers_under_the_paired_design(n_seeds):
    """Each paired run has its own seeds: the t-interval over the n runs covers the test mean."""
    rng = np.random.default_rng(70 + n_seeds)
    covered = 0
    for _ in range(400):
        reps, repro = _paired_study(rng, n_seeds, {1: 0.0}, var_init=0.4, var_data=0.4, var_resid=0.2)
        row = held_out(repro, reps, "eval_accuracy").iloc[0]
        assert row["n"] == n_seeds**2 and row["test_df"] == n_seeds**2 - 1
        covered += row["test_ci_low"] <= 0.0 <= row["test_ci_high"]
    assert covered / 400 >= 0.93


def test_reproduced_mean_under_the_paired_design_covers_near_a_ceiling():
    """Accuracy near 0.9 with an SD of 1 point on 9 pairs: the reproduced mean's interval (logit
    scale, n - 1 df) covers the config's true mean."""
    rng = np.random.default_rng(77)
    covered = []
    for _ in range(400):
        reps, _ = _paired_study(rng, 3, {1: 0.9}, sd=0.01)
        row = per_config_summary(reps, maximize=True).iloc[0]
        assert row["n"] == 9 and row["df"] == 8
        covered.append(row["ci_low"] <= 0.9 <= row["ci_high"])
    assert np.mean(covered) >= 0.93


def _search(storage=None) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name="p", direction="maximize")
    study.set_user_attr("objective_metric", "eval_accuracy")
    dist = {"train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    for value, seed, lr in ((0.9, FRESH_SEED_BASE + 1, 1e-3), (0.8, 3, 2e-3), (0.7, 4, 3e-3)):
        study.add_trial(create_trial(params={"train.learning_rate": lr}, distributions=dist, value=value,
                                     user_attrs={"seed": seed, "data_seed": FRESH_SEED_BASE + 5}))
    return study


def test_paired_plan_shares_fresh_seed_pairs_across_configs_and_no_seed_across_pairs():
    study = _search()
    plan = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=[], determinism_check=False, design="paired")
    assert len(plan) == 2 * 4 and {e["user_attrs"]["seed_kind"] for e in plan} == {"paired"}
    by_config = {}
    for e in plan:
        by_config.setdefault(e["user_attrs"]["replicates_trial"], []).append(
            (e["overrides"]["seed"], e["overrides"]["data_seed"]))
    assert by_config[0] == by_config[1]  # the same pairs for both configs, in the same order
    pairs = by_config[0]
    assert len({s for s, _ in pairs}) == 4 and len({d for _, d in pairs}) == 4  # no seed shared between pairs
    used = {FRESH_SEED_BASE + 1, FRESH_SEED_BASE + 5, 3}  # the reproduced configs' own seeds
    assert not {s for pair in pairs for s in pair} & used and min(min(pairs)) >= FRESH_SEED_BASE
    assert parse_args(["--top-k", "2", "--n-seeds", "3", "--design", "paired"]).design == "paired"


def test_preflight_takes_paired_and_asks_for_two_seeds():
    def conf(n_seeds):
        return OmegaConf.structured(LoraOptunaSweeperConf(reproduce=ReproduceConf(top_k=2, n_seeds=n_seeds,
                                                                                  design="paired")))
    space = parse_search_space({}, ["lora.r=4,8"])
    check_sweeper_settings(conf(2), space, ["eval_accuracy"])
    with pytest.raises(SweeperConfigError, match=r"reproduce.n_seeds: the paired design needs at least 2"):
        check_sweeper_settings(conf(1), space, ["eval_accuracy"])


def _report(tmp_path, design: str, values: dict[int, list[float]], n_seeds: int) -> str:
    storage = optuna.storages.InMemoryStorage()
    _search(storage)
    rep = optuna.create_study(storage=storage, study_name="p--reproduce", direction="maximize")
    for config, scores in values.items():
        for k, v in enumerate(scores):
            seed, data_seed = ((20_000 + k, 30_000 + k) if design == "paired"
                               else (20_000 + k // n_seeds, 20_000 + k % n_seeds))
            rep.add_trial(create_trial(value=v, user_attrs={"replicates_trial": config, "seed_kind": design,
                                                            "seed": seed, "data_seed": data_seed}))
    return (build_report(storage, "p", tmp_path / design, log_to_mlflow=False) / "report.md").read_text()


def test_report_under_the_paired_design(tmp_path):
    rng = np.random.default_rng(3)
    luck = rng.normal(0, 0.01, 9)
    md = _report(tmp_path, "paired", {0: list(0.85 + luck + rng.normal(0, 0.005, 9)),
                                      1: list(0.84 + luck + rng.normal(0, 0.005, 9))}, 3)
    assert "paired on the 9 fresh seed pairs both ran (n = 9 pairs" in md
    assert "One-sided paired t-test of the winner's lead" in md
    assert "Power of the paired design's n = 9 fresh seed pairs per config (one-sided test at 5%" in md
    assert re.search(r"a true lead of 1 SD is found [0-9.]+% of the time, of 2 SD [0-9.]+%", md)
    assert "Not estimable under the paired design" in md and "`--design crossed`" in md
    section = md[md.find(sections.REPRODUCIBILITY):]
    per_config = re.findall(r"^\| (0|1) \| [^|]+ \| 9 \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| 8 \|", section, re.M)
    assert len(per_config) == 2  # n = 9 independent runs, 8 df


def test_crossed_report_with_low_power_points_to_the_paired_design(tmp_path):
    rng = np.random.default_rng(4)
    md = _report(tmp_path, "crossed", {0: list(0.85 + rng.normal(0, 0.01, 4)),
                                       1: list(0.845 + rng.normal(0, 0.01, 4))}, 2)
    line = next(p for p in md.split("\n\n") if p.startswith("Power of this 2 × 2 crossed grid"))
    assert "run `--n-seeds 3`" in line and "Or run `--design paired`: the same 8 runs on 4 fresh seed pairs" in line
    crossed, paired = re.findall(r"of 2 SD ([0-9.]+)%", line)[0], re.findall(r"a 2-SD lead ([0-9.]+)%", line)[0]
    assert float(paired) > float(crossed)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_paired_reproduction_reports_intervals_with_n_and_the_power_line(tmp_path, tiny_bert_dir):
    """A tiny search on data=demo, then `lora-sweep reproduce` (no --design: the paired default) on it: both configs
    run on the same 4 fresh seed pairs, and the report tests the lead on them with n beside every
    interval and the design's power line. The objective is the eval loss: the tiny model's accuracy
    on a few demo rows is one constant value, which would leave nothing to test."""
    from sweep_helpers import REPO, TINY, env, mlflow_client, only_study, run_sweep

    run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "data=demo", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.pruner=none", "train.learning_rate=choice(0.002, 0.02)",
              "hydra.sweeper.objectives=[eval_loss]", "hydra.sweeper.direction=minimize")
    run_env = {**env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sweeps.reproduce", "--top-k", "2", "--n-seeds", "2",
                           "--no-determinism-check"], cwd=tmp_path, env=run_env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "4 fresh (init, data-order) seed pairs shared by the configs (paired)" in proc.stdout
    study, repro = only_study(tmp_path), only_study(tmp_path, suffix="--reproduce")
    runs = repro.get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 2 * 4 and {t.user_attrs["seed_kind"] for t in runs} == {"paired"}
    pairs = {}
    for t in runs:
        pairs.setdefault(t.user_attrs["replicates_trial"], set()).add((t.user_attrs["seed"], t.user_attrs["data_seed"]))
    first, second = pairs.values()
    own = {t.user_attrs[k] for t in study.trials for k in ("seed", "data_seed")}
    assert first == second and len({s for s, _ in first}) == 4 and not {s for p in first for s in p} & own
    assert mlflow_client(tmp_path).get_run(study.user_attrs["mlflow_parent_run_id"]).data.metrics["winner_test_n"] == 4

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--out", str(out)], cwd=tmp_path, env=run_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "paired on the 4 fresh seed pairs both ran (n = 4 pairs" in md and "not testable" not in md
    assert re.search(r"Power of the paired design's n = 4 fresh seed pairs per config \(.*a true lead of 1 SD is "
                     r"found [0-9.]+% of the time, of 2 SD [0-9.]+%", md)
    assert "Not estimable under the paired design" in md and "Held-out test (data.test_split)" in md
    assert re.search(r"\(95% CI [0-9.]+ to [0-9.]+, n = 4\)", md)
    for sentence in re.findall(r"95% CI -?[0-9.]+ to [^)]*\)", md):
        assert "n = " in sentence, sentence
    assert not re.search(r"CI (-?[0-9.]+) to \1\b", md)  # never a zero-width interval


def test_paired_report_with_low_power_asks_for_more_pairs(tmp_path):
    rng = np.random.default_rng(5)
    md = _report(tmp_path, "paired", {0: list(0.85 + rng.normal(0, 0.01, 4)),
                                      1: list(0.845 + rng.normal(0, 0.01, 4))}, 2)
    line = next(p for p in md.split("\n\n") if p.startswith("Power of the paired design's n = 4 fresh seed pairs"))
    assert "cannot reliably detect leads under about 3 SD: run `--n-seeds 3` (9 pairs)." in line
    assert "--design paired" not in line
