"""`hydra.sweeper.pruner=conformal`: a trial is pruned when the conformal upper bound on its final
value (a power-law forecast from its curve plus a margin calibrated on the study's first completed
trials) is below the incumbent. Checked by seeded simulation of saturating learning curves fed
through an in-memory study and the product's `make_pruner` (as bench/pruning_frontier.py drives
it), and end to end on a tiny sweep."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from bench.conformal_pruner import STEPS, TOTAL, Tally, miscoverage, random_curve, run_sweep, simulate
from sweep_helpers import TINY, only_study, run_sweep as run_real_sweep
from sweeps.search.conformal import ConformalPruner, conformal_rank, min_calibration_trials
from sweeps.search.pruning import GuardedPruner, PruneGuard
from sweeps.search.samplers import SweeperConfigError, make_pruner


@pytest.fixture(scope="module")
def at_target() -> Tally:
    return simulate(0.05)


def test_false_kills_stay_within_the_target_over_hundreds_of_trials(at_target):
    """600 trials (10 sweeps of 60, 19 calibration trials each): the share of trials pruned
    although their full curve would have beaten the incumbent is at most 5% plus two standard
    errors of a 5% rate over the trials at risk, while the pruner does save compute. (Few trials
    come near the incumbent, so this rate sits far below its bound; the bound itself is checked
    sharply in test_the_bound_holds_at_every_check_at_the_stated_rate.)"""
    sim = at_target
    assert sim.trials == 600 and sim.at_risk == 10 * (60 - min_calibration_trials(0.05))
    rate = sim.false_kills / sim.at_risk
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / sim.at_risk), (rate, sim)
    assert sim.pruned > 0.2 * sim.at_risk and sim.saved > 0.15, sim


def test_a_smaller_target_prunes_less(at_target):
    strict = simulate(0.025, sweeps=5)  # 39 calibration trials
    loose = simulate(0.2, sweeps=5)
    per_trial = {name: s.pruned / s.trials for name, s in (("strict", strict), ("target", at_target), ("loose", loose))}
    assert per_trial["strict"] < per_trial["target"] < per_trial["loose"], per_trial
    assert strict.saved < at_target.saved < loose.saved


def _calibrated_study(pruner, rng, n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(n):
        curve = random_curve(rng)
        trial = study.ask()
        trial.set_user_attr("total_steps", TOTAL)
        for step, value in curve.items():
            trial.report(value, step)
            assert not trial.should_prune()
        study.tell(trial, max(curve.values()))
    return study


def _bad_trial(study: optuna.Study, level: float = 0.5) -> list[bool]:
    """A trial flat at chance: should_prune after each eval."""
    trial = study.ask()
    trial.set_user_attr("total_steps", TOTAL)
    decisions = []
    for step in STEPS:
        trial.report(level, step)
        decisions.append(trial.should_prune())
    return decisions


def test_a_clearly_bad_curve_is_pruned_at_its_first_check_and_saves_compute():
    rng = np.random.default_rng(1)
    study = _calibrated_study(make_pruner("conformal", guard=PruneGuard(prune_after=0.3, min_trials=4)), rng, 19)
    decisions = _bad_trial(study)
    assert decisions.index(True) == STEPS.index(30)  # the first eval at >= 30% of training: 70% saved
    sim = Tally()
    pruner = make_pruner("conformal", guard=PruneGuard(prune_after=0.3), total_steps=TOTAL)
    bad = [{s: 0.5 + float(rng.normal(0, 0.005)) for s in STEPS} for _ in range(20)]
    sim.add(run_sweep(pruner, [random_curve(rng) for _ in range(19)] + bad))
    assert sim.pruned == 20 and sim.false_kills == 0
    assert sim.steps_trained == 19 * TOTAL + 20 * 30


def test_nothing_is_pruned_before_prune_after_nor_before_the_calibration_trials():
    rng = np.random.default_rng(2)
    guard = PruneGuard(prune_after=0.6, min_trials=4, false_kill=0.1)
    assert min_calibration_trials(0.1) == 9
    study = _calibrated_study(make_pruner("conformal", guard=guard), rng, 8)
    assert _bad_trial(study) == [False] * len(STEPS)  # 8 completed < 9: the quantile does not exist yet
    study = _calibrated_study(make_pruner("conformal", guard=guard), rng, 9)
    decisions = _bad_trial(study)
    assert decisions[:5] == [False] * 5 and decisions[5]  # steps 10..50 < 60% of 100; pruned at 60
    # more calibration trials asked for than the level needs: prune_min_trials wins
    study = _calibrated_study(make_pruner("conformal", guard=PruneGuard(prune_after=0.6, min_trials=12, false_kill=0.1)),
                              rng, 11)
    assert not any(_bad_trial(study))


def test_calibration_trials_that_were_never_checked_do_not_license_pruning():
    """Calibration trials evaluated only at their end had no check, so they say nothing about a
    forecast's error: a trial with checks is not pruned on their account."""
    study = optuna.create_study(direction="maximize", pruner=make_pruner("conformal", guard=PruneGuard(prune_after=0.3)))
    for _ in range(19):
        study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={TOTAL: 0.9},
                                                  user_attrs={"total_steps": TOTAL}))
    assert not any(_bad_trial(study))


def test_the_calibration_is_frozen_at_the_first_completed_trials():
    """Survivors of the pruner's own kills never join the calibration (they would shrink it), and
    another worker's pruner on the same study forms the same calibration."""
    rng = np.random.default_rng(3)
    guard = PruneGuard(prune_after=0.3, false_kill=0.1)
    pruner = make_pruner("conformal", guard=guard)
    study = _calibrated_study(pruner, rng, 9)
    _bad_trial(study)
    calibration = pruner.inner.calibration
    for curve in [random_curve(rng) for _ in range(5)]:
        trial = study.ask()
        for step, value in curve.items():
            trial.report(value, step)
            trial.should_prune()
        study.tell(trial, max(curve.values()))
    assert pruner.inner.calibration is calibration and calibration.trials == tuple(range(9))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) > 9
    other_worker = make_pruner("conformal", guard=guard).inner.calibrate(study)
    assert (other_worker.trials, other_worker.margin) == (calibration.trials, calibration.margin)


def test_conformal_rank_and_the_minimum_calibration():
    assert conformal_rank(19, 0.05) == 19 and conformal_rank(18, 0.05) is None
    assert conformal_rank(99, 0.05) == 95
    assert [min_calibration_trials(a) for a in (0.5, 0.2, 0.1, 0.05, 0.01)] == [1, 4, 9, 19, 99]


def test_minimize_direction_prunes_a_bad_loss_curve():
    """eval_loss: lower is better; a trial whose loss stays high is pruned, a good one is not."""
    rng = np.random.default_rng(4)
    study = optuna.create_study(direction="minimize", pruner=make_pruner("conformal", guard=PruneGuard(prune_after=0.3)))
    for _ in range(19):
        curve = {s: 2.0 - v for s, v in random_curve(rng).items()}
        trial = study.ask()
        trial.set_user_attr("total_steps", TOTAL)
        for step, value in curve.items():
            trial.report(value, step)
            trial.should_prune()
        study.tell(trial, min(curve.values()))
    assert any(_bad_trial(study, level=1.5))
    assert not any(_bad_trial(study, level=2.0 - 0.95))


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.51, 1.0, float("nan")])
def test_a_bad_false_kill_rate_names_the_flag(bad):
    with pytest.raises(SweeperConfigError, match=r"hydra\.sweeper\.prune_false_kill.*\(0, 0\.5\]"):
        make_pruner("conformal", guard=PruneGuard(false_kill=bad))


def test_pruner_kwargs_and_wrapping():
    pruner = make_pruner("conformal", guard=PruneGuard(prune_after=0.4, min_trials=30, false_kill=0.1))
    assert isinstance(pruner, GuardedPruner) and isinstance(pruner.inner, ConformalPruner)
    assert (pruner.inner.false_kill, pruner.inner.prune_after, pruner.inner.n_calibration) == (0.1, 0.4, 30)
    with pytest.raises(SweeperConfigError, match="pruner_kwargs"):
        make_pruner("conformal", {"n_startup_trials": 3})


def test_the_bound_holds_at_every_check_at_the_stated_rate():
    """The guarantee itself: with 19 calibration trials at 5% the margin is the largest of 19
    exchangeable scores, so a fresh trial's final exceeds its bound at some check with chance
    exactly 1/20. Measured over 40 calibration sets of 19 (so the spread of one set's coverage
    averages out) x 25 fresh trials; the bound is neither broken nor vacuous."""
    rate = miscoverage(0.05, sweeps=40, test_trials=25)
    assert 0.02 <= rate <= 0.08, rate


def _replay_decisions(study: optuna.Study, guard: PruneGuard) -> list[TrialState]:
    """The stored trials, in order, fed again through a fresh pruner: what it decides for each."""
    replay = optuna.create_study(direction=study.direction, pruner=make_pruner("conformal", guard=guard))
    states = []
    for stored in sorted(study.trials, key=lambda t: t.number):
        trial = replay.ask()
        trial.set_user_attr("total_steps", stored.user_attrs["total_steps"])
        for step, value in sorted(stored.intermediate_values.items()):
            trial.report(value, step)
            if trial.should_prune():
                replay.tell(trial, state=TrialState.PRUNED)
                states.append(TrialState.PRUNED)
                break
        else:
            replay.tell(trial, stored.value)
            states.append(TrialState.COMPLETE)
    return states


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_real_sweep_prunes_by_the_rule_and_a_bad_rate_is_refused(tmp_path, tiny_bert_dir):
    """A tiny one-worker sweep on the demo data with the conformal pruner runs to its end, and each
    trial was pruned exactly when the rule says so from its stored curve; a rate outside (0, 0.5]
    stops the sweep before any trial, naming the flag."""
    model = f"model.name_or_path={tiny_bert_dir}"
    bad = run_real_sweep(tmp_path, *TINY, model, "hydra.sweeper.pruner=conformal", "hydra.sweeper.prune_false_kill=0.7",
                         check=False)
    assert bad.returncode != 0 and "hydra.sweeper.prune_false_kill" in bad.stdout + bad.stderr
    assert not (tmp_path / "optuna-journal.log").exists()

    run_real_sweep(tmp_path, *TINY, model, "data=demo", "train.max_steps=8", "task.metric=loss", "task.direction=minimize",
                   "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler=random",
                   "hydra.sweeper.pruner=conformal", "hydra.sweeper.prune_false_kill=0.5",
                   "hydra.sweeper.prune_after=0.25", "hydra.sweeper.prune_min_trials=1",
                   "train.learning_rate=tag(log, interval(1e-4, 0.3))")
    study = only_study(tmp_path)
    assert len(study.trials) == 5 and study.trials[0].state == TrialState.COMPLETE  # the calibration trial
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert any(t.state == TrialState.PRUNED for t in study.trials)  # the learning rates near 0.3 diverge
    for trial in study.trials:
        if trial.state == TrialState.PRUNED:
            assert 2 <= trial.last_step < 8  # from 25% of training, never at the last eval
    guard = PruneGuard(prune_after=0.25, min_trials=1, false_kill=0.5)
    assert _replay_decisions(study, guard) == [t.state for t in sorted(study.trials, key=lambda t: t.number)]
