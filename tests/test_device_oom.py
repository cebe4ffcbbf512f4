"""Out of memory on a GPU shared by several workers: the trial is queued again instead of failed,
and when OOMs repeat on one device the sweep retires one of its workers (never the last)."""

from __future__ import annotations

import multiprocessing as mp
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from sweeps.runtime.compose import ComposeSpec
from sweeps.search.space import parse_search_space
from sweeps.search.storage import open_storage, storage_url
from sweeps.search.study import OOM_REQUEUE_LIMIT, requeue_after_oom
from sweeps.runtime.supervisor import Supervisor
from sweeps.runtime.events import TrialEnd, TrialFinished
from sweeps.runtime.worker import Worker, WorkerSpec
from sweeps.runtime.worker_plan import DeviceOomPolicy


def test_repeated_ooms_on_one_gpu_retire_one_of_its_workers_never_the_last():
    policy = DeviceOomPolicy({0: "0", 1: "0", 2: "0", 3: "1", 4: None}, repeats=2)
    assert policy.record_oom(1) is None            # once may be a neighbour's peak
    assert policy.record_oom(3) is None            # counted per device
    assert policy.record_oom(1) == 1               # twice on GPU 0: the worker that hit it goes
    assert policy.active_on("0") == [0, 2]
    assert policy.record_oom(1) is None            # the count starts again after a reduction
    assert policy.record_oom(0) == 0
    assert policy.record_oom(2) is None and policy.record_oom(2) is None  # GPU 0 keeps its last worker
    assert policy.active_on("0") == [2]
    assert policy.record_oom(3) is None            # GPU 1 has one worker only
    assert policy.record_oom(4) is None and policy.record_oom(4) is None  # CPU: no device to relieve


def test_a_dead_workers_replacement_takes_its_place_on_the_device():
    policy = DeviceOomPolicy({0: "0", 1: "0"}, repeats=1)
    policy.replaced(1, 7)
    assert policy.active_on("0") == [0, 7]
    assert policy.record_oom(7) == 7


def _ended_worker() -> mp.Process:
    proc = mp.get_context("fork").Process(target=int)
    proc.start()
    proc.join()
    return proc


def test_the_supervisor_counts_requeued_ooms_as_no_failure_and_retires_a_worker():
    specs = [SimpleNamespace(worker_id=i, cuda_device="0") for i in range(3)]
    supervisor = Supervisor(optuna.create_study(), None, specs, n_trials=8, max_retry=0, max_failure_rate=0.0)
    retire = {i: supervisor.ctx.Event() for i in range(3)}
    supervisor.retire.update(retire)
    for number in (0, 1):
        supervisor.events.put((2, TrialFinished(f"s:{number}", number, TrialEnd.OOM_REQUEUED, None,
                                                "out of memory: CUDA out of memory")))
    supervisor.procs.update({i: _ended_worker() for i in range(3)})

    outcome = supervisor.run()  # max_failure_rate=0 would abort on a single counted failure

    assert outcome.failed == 0 and outcome.oom_requeued == 2
    assert outcome.retired_workers == ["worker 2 on GPU 0"]
    assert retire[2].is_set() and not retire[0].is_set() and not retire[1].is_set()


def test_an_oom_trial_is_queued_again_with_its_params_in_a_fresh_folder(tmp_path):
    study = optuna.create_study(storage=open_storage(storage_url(None, cwd=tmp_path)), study_name="s")
    study.enqueue_trial({"lora.r": 8}, user_attrs={"seed": 3})
    trial = study.ask()
    trial.suggest_categorical("lora.r", [4, 8, 16])
    for key, value in {"checkpoint_dir": str(tmp_path / "trial_0000"), "mlflow_run_id": "abc", "worker_pid": 1,
                       "oom_retry": {"batch_size": 4}}.items():
        trial.set_user_attr(key, value)
    failed = study._storage.get_trial(trial._trial_id)
    assert requeue_after_oom(study, failed)
    study.tell(trial, state=TrialState.FAIL)
    queued = study.get_trials(states=(TrialState.WAITING,))[0]
    assert queued.system_attrs["fixed_params"] == {"lora.r": 8}
    assert queued.user_attrs["seed"] == 3 and queued.user_attrs["oom_requeued_from"] == failed.number
    assert not {"checkpoint_dir", "mlflow_run_id", "worker_pid", "oom_retry"} & set(queued.user_attrs)
    again = queued
    for _ in range(OOM_REQUEUE_LIMIT - 1):
        assert requeue_after_oom(study, again)
        again = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert not requeue_after_oom(study, again)  # a config that never fits fails like any other


def test_a_retired_worker_takes_no_further_trial(tmp_path):
    url = storage_url(None, cwd=tmp_path)
    optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize")
    spec = WorkerSpec(worker_id=0, study_name="s", storage_url=url, n_trials=4,
                      space=parse_search_space({"lora.r": "choice(4, 8)"}),
                      compose=ComposeSpec(str(tmp_path), "sweep"), objectives=["eval_accuracy"],
                      trial_root=str(tmp_path), pruner="none")
    retire = mp.get_context("spawn").Event()
    retire.set()
    worker = Worker(spec, events=None, retire=retire)
    worker.loop()
    assert worker.study.trials == []
