"""SLURM as the cluster engine, on a real one-node cluster (`.ci/slurm.sh` starts it): a sweep
submitted through `python -m sweeps.slurm` as two tasks shares one study, and a job cancelled
mid-sweep and submitted again finishes the sweep with nothing lost and nothing run twice."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from sweep_helpers import REPO, TINY, env, only_study, runs, wait_for
from sweeps.slurm import SlurmJob, parse, storage_warnings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _cluster_up() -> str | None:
    """Why the SLURM tests cannot run here, or None when a cluster answers."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "SLURM is not installed (bash .ci/slurm.sh installs and starts a one-node cluster)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if probe.returncode != 0 or not any(s.strip().rstrip("*") in ("idle", "mixed", "allocated")
                                        for s in probe.stdout.split()):
        return f"no SLURM node is up (sinfo: {probe.stdout.strip() or probe.stderr.strip()}); run bash .ci/slurm.sh"
    return None


def _submit(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.slurm", *args], cwd=cwd, env={**env(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=1500)


def _overrides(model_dir, n_trials: int, steps: int) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps"))]
    return [*tiny, f"model.name_or_path={model_dir}", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.pruner=none", "search_space=none", "train.learning_rate=tag(log, interval(1e-4, 1e-2))",
            f"train.max_steps={steps}", f"train.eval_every_steps={steps}"]


def _assert_sweep_whole(cwd, n_trials: int) -> None:
    """Exactly n_trials finished, none RUNNING, no config trained to the end twice, every MLflow run closed."""
    study = only_study(cwd)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    assert len(finished) == n_trials, [(t.number, t.state.name) for t in study.trials]
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    configs = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(configs)) == len(configs), "a config was run to the end twice"
    _, parents, children = runs(cwd)
    assert len(parents) == 1
    assert [r.info.run_id for r in parents + children if r.info.status == "RUNNING"] == []
    assert sum(r.info.status == "FINISHED" for r in children) == sum(t.state == TrialState.COMPLETE for t in finished)


def test_dry_run_prints_the_script_with_signal_and_tasks(tmp_path):
    proc = _submit(tmp_path, "--nodes", "2", "--gpus-per-node", "4", "--dry-run", "--", "hydra.sweeper.n_trials=64")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("#!/bin/bash")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=TERM@120", "#SBATCH --requeue"):
        assert line in script
    assert "sweep.py -m hydra.sweeper.n_trials=64" in script and "srun" in script
    # Two nodes on the default stores: the user is told what will not be shared.
    assert "journal file" in proc.stderr and "mlflow server" in proc.stderr
    assert not list(tmp_path.iterdir()), "a dry run wrote files"


def test_secrets_stay_out_of_the_script_file():
    job = SlurmJob(overrides=["hydra.sweeper.storage=postgresql://u:Sl4rmS3cret@db/optuna", "+model.hf_token=hf_abcdef123456",
                              "hydra.sweeper.n_trials=8"], nodes=2)
    script = job.script()
    assert "Sl4rmS3cret" not in script and "hf_abcdef123456" not in script
    assert '"$LORA_SWEEP_SECRET_0" "$LORA_SWEEP_SECRET_1" hydra.sweeper.n_trials=8' in script
    assert job.secret_overrides() == {"LORA_SWEEP_SECRET_0": job.overrides[0], "LORA_SWEEP_SECRET_1": job.overrides[1]}


def test_bad_flags_are_refused_before_submitting(tmp_path):
    proc = _submit(tmp_path, "--nodes", "0", "--dry-run")
    assert proc.returncode != 0 and "--nodes must be at least 1" in proc.stderr
    with pytest.raises(SystemExit):
        parse(["--dry-run", "--", "-m"])


def test_storage_warnings_only_across_nodes():
    one = SlurmJob(overrides=[], nodes=1)
    assert storage_warnings(one) == []
    shared = SlurmJob(overrides=["hydra.sweeper.storage=postgresql://u@db/optuna", "mlflow.tracking_uri=http://db:5000"],
                      nodes=3)
    assert storage_warnings(shared) == []


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_two_tasks_share_one_study_then_cancel_and_resubmit(tmp_path, tiny_bert_dir):
    reason = _cluster_up()
    if reason:
        pytest.skip(reason)
    # Two sweep processes (SLURM tasks) on one study: n_trials is their total.
    first = tmp_path / "whole"
    first.mkdir()
    proc = _submit(first, "--tasks-per-node", "2", "--wait", "--", *_overrides(tiny_bert_dir, 4, 6))
    assert proc.returncode == 0, proc.stdout + proc.stderr + _logs(first)
    _assert_sweep_whole(first, 4)
    study = only_study(first)
    assert study.user_attrs.get("sweep_sessions") == 2
    assert len({t.user_attrs.get("supervisor_pid") for t in study.trials}) == 2, "one task did all the work"

    # scancel mid-sweep, then the same command again: the sweep finishes, nothing lost or run twice.
    second = tmp_path / "cancelled"
    second.mkdir()
    overrides = _overrides(tiny_bert_dir, 6, 120)
    proc = _submit(second, "--tasks-per-node", "2", "--", *overrides)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("SLURM job ")[1].split(":")[0]
    journal = second / "optuna-journal.log"

    def one_finished():
        if not journal.exists():
            return False
        return len(only_study(second).get_trials(deepcopy=False, states=FINISHED)) >= 1
    wait_for(one_finished, 900, "a finished trial before the cancel", interval=1.0)
    subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: job_id not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                                  text=True).stdout.split(), 120, "the cancelled job to leave the queue")
    time.sleep(1.0)
    before = only_study(second)
    kept = len(before.get_trials(deepcopy=False, states=FINISHED))
    assert 1 <= kept < 6, "the cancel came too late to test a resume"
    proc = _submit(second, "--tasks-per-node", "2", "--wait", "--", *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _logs(second)
    _assert_sweep_whole(second, 6)


def _logs(cwd) -> str:
    return "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((cwd / "slurm").glob("*.out")))

