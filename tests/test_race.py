"""hydra.sweeper.race on a real (tiny) sweep: the top configs re-run on shared fresh seed pairs in a
companion study, the winner is reported, tagged and is what export picks by default."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, mlflow_client, only_study, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_race_reruns_the_top_configs_on_fresh_seed_pairs_and_names_a_winner(tmp_path, tiny_bert_dir):
    out = run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.pruner=none", "train.learning_rate=choice(0.002, 0.02, 0.2)",
                    "hydra.sweeper.race.enabled=true", "hydra.sweeper.race.top_k=2",
                    "hydra.sweeper.race.max_runs=4").stdout
    study = only_study(tmp_path)
    race = only_study(tmp_path, suffix="--race")
    runs = race.get_trials(states=(TrialState.COMPLETE,))
    top = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)[:2]
    assert len(runs) == 4 and {t.user_attrs["replicates_trial"] for t in runs} == {t.number for t in top}
    for rnd in (0, 1):  # each round: one fresh seed pair shared by every config, never a seed the search used
        pairs = {(t.user_attrs["replicate_seed"], t.user_attrs["replicate_data_seed"]) for t in runs
                 if t.user_attrs["race_round"] == rnd}
        assert len(pairs) == 1
        assert not set(next(iter(pairs))) & {t.user_attrs["seed"] for t in study.trials}
    outcome = study.user_attrs["race"]
    assert outcome["winner"] in {t.number for t in top} and outcome["n"] == 2 and outcome["runs"] == 4
    assert "test_mean" in outcome  # race runs are scored on the held-out split too
    assert f"winner (seed race): #{outcome['winner']}" in out and "race winner" in out
    parent = mlflow_client(tmp_path).get_run(study.user_attrs["mlflow_parent_run_id"]).data
    assert parent.tags["race.winner"] == str(outcome["winner"]) and parent.tags["winner.trial_number"] == str(outcome["winner"])
    assert parent.metrics["race_winner_mean"] == pytest.approx(outcome["mean"])

    from sweeps.export import find_trial

    assert find_trial(str(tmp_path / "optuna-journal.log"), None, None, None).trial.number == outcome["winner"]
