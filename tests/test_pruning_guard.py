"""No pruner acts before `prune_after` of a trial's steps nor before `prune_min_trials` trials
completed; Hyperband's first rung comes from the same fraction."""

from __future__ import annotations

import optuna
import pytest

from sweeps.search.pruning import PruneGuard
from sweeps.search.samplers import SweeperConfigError, make_pruner

STEPS = (2, 4, 6, 8)


def _study(pruner: optuna.pruners.BasePruner, finished: int) -> optuna.Study:
    """`finished` completed trials that reached 0.9 accuracy at every eval step."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(finished):
        trial = study.ask()
        for step in STEPS:
            trial.report(0.9, step)
            assert not trial.should_prune()  # as a worker asks after every report
        study.tell(trial, 0.9)
    return study


def _slow_starter(study: optuna.Study, total_steps: int = 8) -> list[bool]:
    """A trial at chance level (0.5) at every eval: should_prune after each report."""
    trial = study.ask()
    trial.set_user_attr("total_steps", total_steps)
    decisions = []
    for step in STEPS:
        trial.report(0.5, step)
        decisions.append(trial.should_prune())
    return decisions


@pytest.mark.parametrize("name", ["median", "percentile", "successive_halving"])
def test_nothing_is_pruned_before_the_fraction_or_the_finished_trials(name):
    guard = PruneGuard(prune_after=0.5, min_trials=3)
    decisions = _slow_starter(_study(make_pruner(name, guard=guard), finished=3))
    assert decisions[:1] == [False]  # step 2 < 0.5 x 8 steps
    assert any(decisions[1:]), decisions  # from step 4 on the pruner may act (the trial is far behind)
    assert _slow_starter(_study(make_pruner(name, guard=guard), finished=2)) == [False] * 4  # too few finished
    unguarded = PruneGuard(prune_after=0.0, min_trials=0)
    if name != "successive_halving":  # its first rung is min_resource, not the guard's
        assert _slow_starter(_study(make_pruner(name, guard=unguarded), finished=3))[0]


def test_patience_keeps_an_improving_trial(recwarn):
    study = _study(make_pruner("median", guard=PruneGuard(prune_after=0.0, min_trials=1, patience=2)), finished=2)
    assert not [w for w in recwarn if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    trial = study.ask()
    decisions = []
    for step, value in zip(STEPS, (0.5, 0.6, 0.7, 0.7)):
        trial.report(value, step)
        decisions.append(trial.should_prune())
    assert decisions == [False, False, False, False]  # behind the median, but still improving within patience


def test_hyperband_first_rung_and_bad_settings():
    pruner = make_pruner("hyperband", guard=PruneGuard(prune_after=0.4), total_steps=76)
    assert pruner.inner._min_resource == 31  # ceil(0.4 x 76)
    assert make_pruner("hyperband", {"min_resource": 5}, total_steps=76).inner._min_resource == 5
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(SweeperConfigError, match="prune_after"):
        make_pruner("median", guard=PruneGuard(prune_after=1.0))
