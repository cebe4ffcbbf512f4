"""`hydra.sweeper.pruner=wilcoxon`: a trial is pruned when its scores on the eval rows, paired
with the best trial's on the same rows, are worse by Optuna's signed-rank test. Checked by seeded
simulation against the median pruner, and end to end on a tiny model (the rows the pruner pairs
are the rows the trial was scored on)."""

from __future__ import annotations

import random
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, only_study, run_sweep
from sweeps.search.pruning import PruneGuard, row_scores_key
from sweeps.search.samplers import make_pruner

ROWS, STEPS = 300, (2, 4, 6, 8)
UNGUARDED = PruneGuard(prune_after=0.0, min_trials=1)


def _rows(rng: random.Random, accuracy: float) -> list[float]:
    return [float(rng.random() < accuracy) for _ in range(ROWS)]


def _study(pruner: optuna.pruners.BasePruner, rng: random.Random, finished: tuple[float, ...]) -> optuna.Study:
    """Finished trials, each correct on a random `accuracy` share of the rows at every eval step."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for accuracy in finished:
        trial = study.ask()
        for step in STEPS:
            rows = _rows(rng, accuracy)
            trial.set_user_attr(row_scores_key(step), rows)
            trial.report(statistics.fmean(rows), step)
        study.tell(trial, statistics.fmean(rows))
    return study


def _first_prune(study: optuna.Study, rng: random.Random, accuracy: float, at: tuple[int, ...] = STEPS) -> int | None:
    """A new trial reports its rows at each step; the step at which it is pruned, if any."""
    trial = study.ask()
    trial.set_user_attr("total_steps", STEPS[-1])
    for step in at:
        rows = _rows(rng, accuracy)
        trial.set_user_attr(row_scores_key(step), rows)
        trial.report(statistics.fmean(rows), step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, state=TrialState.FAIL)  # out of the way: never the best
    return None


def test_a_trial_as_good_as_the_best_is_rarely_pruned_where_the_median_prunes_half():
    """One look at 300 rows: a trial whose true accuracy equals the best's is pruned at about the
    test's level (p_threshold 0.05), while the median pruner, comparing one noisy number with the
    median of four equals (itself a noisy number, fixed for every simulated trial), cuts a large
    share of them."""
    rng = random.Random(0)
    equal = (0.85, 0.85, 0.85, 0.85)
    wilcoxon = _study(make_pruner("wilcoxon", guard=UNGUARDED), rng, equal)
    median = _study(make_pruner("median", guard=UNGUARDED), rng, equal)
    sims = 300
    pruned_w = sum(_first_prune(wilcoxon, rng, 0.85, at=(4,)) is not None for _ in range(sims)) / sims
    pruned_m = sum(_first_prune(median, rng, 0.85, at=(4,)) is not None for _ in range(sims)) / sims
    assert pruned_w <= 0.08, pruned_w
    assert pruned_m >= 0.3, pruned_m


def test_a_trial_worse_by_construction_is_pruned_at_its_first_checkpoint():
    rng = random.Random(1)
    study = _study(make_pruner("wilcoxon", guard=UNGUARDED), rng, (0.85, 0.80))
    steps = [_first_prune(study, rng, 0.70) for _ in range(50)]
    assert sum(s == STEPS[0] for s in steps) >= 48, steps  # 15 points behind on 300 rows: p ~ 1e-5


def test_the_guard_and_the_p_threshold_apply():
    rng = random.Random(2)
    guarded = _study(make_pruner("wilcoxon", guard=PruneGuard(prune_after=0.5, min_trials=2)), rng, (0.85, 0.85))
    assert _first_prune(guarded, rng, 0.5) == 4  # not at step 2 < 0.5 x 8, at the first step after
    too_few = _study(make_pruner("wilcoxon", guard=PruneGuard(prune_after=0.0, min_trials=3)), rng, (0.85, 0.85))
    assert _first_prune(too_few, rng, 0.5) is None
    strict = _study(make_pruner("wilcoxon", {"p_threshold": 1e-12}, guard=UNGUARDED), rng, (0.85,))
    assert _first_prune(strict, rng, 0.80) is None  # 5 points behind is not that sure


def test_no_rows_no_pruning():
    """Trials without row scores (a store from another pruner) are never paired, so never pruned."""
    study = optuna.create_study(direction="maximize", pruner=make_pruner("wilcoxon", guard=UNGUARDED))
    study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={2: 0.9}))
    trial = study.ask()
    trial.report(0.1, 2)
    assert not trial.should_prune()


@pytest.mark.timeout(900)
def test_sweep_stores_the_rows_it_scored_and_rejects_objectives_without_rows(tmp_path, tiny_bert_dir):
    model = f"model.name_or_path={tiny_bert_dir}"
    bad = run_sweep(tmp_path, *TINY, model, "hydra.sweeper.pruner=wilcoxon", "task.metric=macro_f1",
                    "hydra.sweeper.n_trials=1", check=False)
    assert bad.returncode != 0
    assert "wilcoxon" in bad.stdout + bad.stderr and "eval_macro_f1" in bad.stdout + bad.stderr
    assert not (tmp_path / "optuna-journal.log").exists()

    run_sweep(tmp_path, *TINY, model, "hydra.sweeper.pruner=wilcoxon", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.n_jobs=1", "hydra.sweeper.prune_after=0", "hydra.sweeper.prune_min_trials=1")
    study = only_study(tmp_path)
    for trial in study.trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        for step, value in trial.intermediate_values.items():
            rows = trial.user_attrs[row_scores_key(step)]
            assert len(rows) == 24 and set(rows) <= {0.0, 1.0}  # eval_accuracy: right or wrong, per eval row
            assert statistics.fmean(rows) == pytest.approx(value)  # the rows the trial was scored on
