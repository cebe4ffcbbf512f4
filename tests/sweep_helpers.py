"""Run the real CLI (`python sweep.py ...`) in a scratch directory and read back its stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweep.py"

# Tiny-model sweeps: a few optimizer steps, a few examples, 4-bit quantization on.
TINY = ["data.max_train_samples=48", "data.max_eval_samples=24", "train.max_steps=6", "train.eval_every_steps=2",
        "train.log_every_steps=1", "train.batch_size=8", "train.max_seq_length=32", "quant=4bit"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
             TOKENIZERS_PARALLELISM="false", MLFLOW_ENABLE_ASYNC_LOGGING="false")
    return e


def run_sweep(cwd: Path, *overrides: str, multirun: bool = True, check: bool = True, timeout: int = 600):
    cmd = [sys.executable, str(SWEEP)] + (["-m"] if multirun else []) + list(overrides)
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def start_sweep(cwd: Path, *overrides: str) -> subprocess.Popen:
    """A sweep in the background (its own process group, like a terminal job) for kill tests."""
    cmd = [sys.executable, str(SWEEP), "-m", *overrides]
    log = open(cwd / "sweep.log", "w")
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def journal(cwd: Path) -> optuna.storages.BaseStorage:
    from sweeps.search.storage import open_storage

    return open_storage(None, cwd=cwd)


def only_study(cwd: Path, suffix: str = "") -> optuna.Study:
    storage = journal(cwd)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.endswith(suffix)
             and (suffix or not s.study_name.endswith(("--reproduce", "--race")))]
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def mlflow_client(cwd: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")


def runs(cwd: Path, experiment: str = "lora-sweep"):
    client = mlflow_client(cwd)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "no MLflow experiment"
    found = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in found if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId")]
    return client, parents, children


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
