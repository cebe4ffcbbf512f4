"""hydra.sweeper.max_memory_gb: configs the pre-flight estimates over the limit are skipped before
they start, recorded in Optuna as constraint-violating, never trained and never charged to the
budget; a limit nothing fits under is refused before any trial."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, only_study, run_sweep, runs

# batch 64 x 128 tokens is estimated near 0.05 GiB on the tiny BERT, batch 2 near 0.005 GiB
SPACE = ["search_space=none", "train.batch_size=choice(2,64)", "train.max_seq_length=128"]


def _model(path) -> str:
    return f"model.name_or_path={path}"


@pytest.mark.slow
def test_configs_over_the_limit_are_skipped_recorded_and_not_counted(tmp_path, tiny_bert_dir):
    proc = run_sweep(tmp_path, *TINY, *SPACE, _model(tiny_bert_dir), "train.batch_size=64",  # the base is over
                     "hydra.sweeper.max_memory_gb=0.02", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.sampler=random", "hydra.sweeper.pruner=none")
    assert "skipped before they start" in proc.stdout
    study = only_study(tmp_path)
    skipped = [t for t in study.trials if "skipped_over_memory" in t.user_attrs]
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert study.trials[0].user_attrs.get("base") and study.trials[0] in skipped  # the base config did not fit
    assert len(trained) == 2  # n_trials counts trained configs only
    assert all(t.params["train.batch_size"] == 2 and t.user_attrs["memory_estimate_gb"] <= 0.02 for t in trained)
    for t in skipped:
        assert t.state == TrialState.PRUNED and not t.intermediate_values
        assert t.user_attrs["memory_estimate_gb"] > 0.02 and t.constraints["max_memory_gb"] > 0
        assert "over hydra.sweeper.max_memory_gb=0.02" in t.user_attrs["skipped_over_memory"]
    assert all(t.constraints["max_memory_gb"] <= 0 for t in trained)
    assert f"{len(skipped)} skipped over max_memory_gb" in proc.stdout
    _, _, children = runs(tmp_path)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == sorted(t.number for t in trained)


@pytest.mark.slow
@pytest.mark.parametrize("limit, expected", [("0.0001", "below the estimate of the cheapest config"),
                                             ("-1", "must be a number of GiB > 0")])
def test_a_limit_nothing_fits_under_is_refused_before_any_trial(tmp_path, tiny_bert_dir, limit, expected):
    proc = run_sweep(tmp_path, *TINY, *SPACE, _model(tiny_bert_dir), f"hydra.sweeper.max_memory_gb={limit}",
                     "hydra.sweeper.n_trials=2", check=False)
    assert proc.returncode != 0
    assert "hydra.sweeper.max_memory_gb" in proc.stderr + proc.stdout and expected in proc.stderr + proc.stdout
    assert not (tmp_path / "optuna-journal.log").exists()
