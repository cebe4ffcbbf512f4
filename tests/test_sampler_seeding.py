"""A worker's sampler seed comes from the sweep's settings alone: the same command proposes the
same configurations whatever order its workers start in; a resume proposes new ones."""

from __future__ import annotations

import optuna

from sweeps.runtime.compose import ComposeSpec
from sweeps.search.space import parse_search_space, suggest
from sweeps.search.storage import open_storage, storage_url
from sweeps.runtime.worker import Worker, WorkerSpec

SPACE = parse_search_space({"lora.r": "choice(4, 8, 16)", "train.learning_rate": "tag(log, interval(1e-4, 1e-2))",
                            "lora.lora_dropout": "interval(0.0, 0.2)"})


def _first_proposal(workdir, trials_already_there: int, session_index: int = 0) -> dict:
    url = storage_url(None, cwd=workdir)
    study = optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize")
    for _ in range(trials_already_there):  # the other worker was quicker and has asked already
        study.enqueue_trial({"lora.r": 4, "train.learning_rate": 1e-3, "lora.lora_dropout": 0.1})
        trial = study.ask()
        for key, dist in SPACE.distributions.items():
            suggest(trial, key, dist)
    spec = WorkerSpec(worker_id=1, study_name="s", storage_url=url, n_trials=10, space=SPACE,
                      compose=ComposeSpec(str(workdir), "sweep"), objectives=["eval_accuracy"],
                      trial_root=str(workdir), sampler="tpe", sampler_seed=0, pruner="none",
                      session_index=session_index)
    trial = Worker(spec, events=None).study.ask()
    return {k: suggest(trial, k, d) for k, d in SPACE.distributions.items()}


def test_proposals_do_not_depend_on_when_the_worker_started(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = _first_proposal(tmp_path / "a", trials_already_there=0)
    assert _first_proposal(tmp_path / "b", trials_already_there=1) == first
    assert _first_proposal(tmp_path / "c", trials_already_there=0, session_index=1) != first  # a resume
