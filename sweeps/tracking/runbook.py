"""MLflow bookkeeping: one parent run per sweep, one child run per trial.

A `RunBook` is the single writer of a sweep's MLflow runs. Workers never touch MLflow: they send
typed trial events (sweeps/runtime/events.py) to the sweep process, whose MlflowSink applies them here. So a
local SQLite store sees one writer however many workers run, children get `mlflow.parentRunId`
explicitly (no in-process run stack), and the sweep process, which knows every open run, can close
the runs of a dead worker as FAILED and those of an interrupted sweep as KILLED.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from sweeps.tracking.redact import flatten, redact, redact_yaml, scrub_text
from sweeps.search.storage import SQLITE, absolute_sqlite, sqlite_path
from trainer.trace import traced

log = logging.getLogger(__name__)

_PARAM_BATCH = 100
_METRIC_BATCH = 1000
_MAX_PARAM_LEN = 6000


def tracking_uri(uri: str | None, cwd: str | os.PathLike | None = None) -> str:
    """Absolute tracking URI: `sqlite:///mlflow.db` resolves against the directory the user ran from."""
    base = Path(cwd or os.getcwd())
    uri = uri or "sqlite:///mlflow.db"
    if uri.startswith(SQLITE):
        return absolute_sqlite(uri, base)
    if "://" not in uri:  # a bare folder: MLflow's legacy file store
        return (base / uri).resolve().as_uri()
    return uri


def artifact_root(uri: str, cwd: str | os.PathLike | None = None) -> str | None:
    """Local stores keep artifacts beside the database (`mlartifacts/`); servers decide themselves."""
    path = sqlite_path(uri)
    return (path.parent / "mlartifacts").as_uri() if path is not None else None


@contextlib.contextmanager
def sqlite_init_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a local SQLite store: the first access runs MLflow's schema
    migrations, and two sweep processes starting together (SLURM tasks, a second terminal) would
    otherwise run them at once and break each other's (alembic on SQLite rebuilds tables)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".init.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def params_from_config(config: dict[str, Any]) -> dict[str, str]:
    """Flattened, redacted resolved config as MLflow params (strings, length-capped)."""
    return {k: str(v)[:_MAX_PARAM_LEN] for k, v in flatten(redact(config)).items()}


# MLflow 3.17's UI opens an experiment in its GenAI view whatever its tags say (so the sweep prints
# a link to the model-training view); the kind tag is for versions that read it. A kind the user set
# on their experiment is kept.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


def runs_page_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the model-training view (`workflowType=machine_learning`):
    on the tracking server itself, or on `mlflow ui` for a local store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else MLFLOW_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class RunBook:
    """Creates, feeds and closes the MLflow runs of one sweep (or of one single run)."""

    @traced("mlflow.open_store")
    def __init__(self, uri: str, experiment_name: str, parent_run_id: str | None = None, retry_s: float | None = None):
        from sweeps.search.storage import Retrying, retry_call, retry_first_open

        self.uri = uri
        with sqlite_init_lock(uri):  # the client's store runs the schema migrations when it opens
            # Opening and every later call ride out a blip of the tracking store (see storage.retry_call).
            client = retry_call(lambda: retry_first_open(lambda: MlflowClient(tracking_uri=uri), "the MLflow store"),
                                "opening the MLflow store", retry_s)
            self.client = Retrying(client, retry_s, "MLflow")
            self.experiment_id = retry_first_open(lambda: self._experiment(experiment_name, artifact_root(uri)),
                                                  "the MLflow store")
        self.parent_run_id = parent_run_id
        self.open_runs: dict[str, str] = {}  # trial key -> run id, for runs not yet closed

    def _experiment(self, name: str, location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # another sweep process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- parent ---------------------------------------------------------------------------
    @traced("mlflow.open_parent")
    def open_parent(self, run_name: str, existing_run_id: str | None, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Reattach to the sweep's parent run (resume) or create it."""
        if existing_run_id:
            try:
                run = self.client.get_run(existing_run_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(existing_run_id, status="RUNNING")
                    self.parent_run_id = existing_run_id
                    self.set_tags(existing_run_id, tags)
                    return existing_run_id
            except Exception:  # deleted or in another store: start a fresh parent
                log.warning("MLflow parent run %s not found in %s; creating a new one", existing_run_id, self.uri)
        run = self.client.create_run(self.experiment_id, run_name=scrub_text(run_name),
                                     tags=_tag_dict({**tags, "sweep.role": "parent"}))
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, params)
        return self.parent_run_id

    def finish_parent(self, status: str, metrics: dict[str, float], tags: dict[str, str], files: dict[str, str]) -> None:
        if not self.parent_run_id:
            return
        self.log_metric_dict(self.parent_run_id, metrics, step=int(time.time()))
        self.set_tags(self.parent_run_id, tags)
        for name, text in files.items():
            self.client.log_text(self.parent_run_id, scrub_text(text), name)
        self.client.set_terminated(self.parent_run_id, status=status)

    # -- trials (the methods workers call through events) --------------------------------
    def open_trial(self, key: str, run_name: str, config: dict[str, Any], tags: dict[str, str], config_yaml: str,
                   reopen_run_id: str | None = None) -> str:
        """A trial's run; `reopen_run_id`: the run of the preempted attempt this trial continues,
        set RUNNING again (its params, config and the metrics up to the checkpoint are kept), so
        a config has one run however often it was preempted."""
        if reopen_run_id and self._reopen(reopen_run_id, tags):
            self.open_runs[key] = reopen_run_id
            return reopen_run_id
        all_tags = {MLFLOW_RUN_NAME: run_name, **tags}
        if self.parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=scrub_text(run_name), tags=_tag_dict(all_tags))
        run_id = run.info.run_id
        self.open_runs[key] = run_id
        self._log_params(run_id, params_from_config(config))
        self.client.log_text(run_id, redact_yaml(config_yaml), "config.yaml")  # same masking as the params
        return run_id

    def _reopen(self, run_id: str, tags: dict[str, str]) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted, or in another store: the trial gets a new run
            log.warning("MLflow run %s to continue was not found; opening a new one", run_id)
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {**tags, "sweep.preempted": "continued"})  # sweep.preempted_at_step stays
        if "sweep.end_reason" in run.data.tags:
            self.client.delete_tag(run_id, "sweep.end_reason")
        return True

    def log_metrics(self, key: str, step: int, metrics: dict[str, float]) -> None:
        run_id = self.open_runs.get(key)
        if run_id:
            self.log_metric_dict(run_id, metrics, step)

    def set_trial_tags(self, key: str, tags: dict[str, str]) -> None:
        run_id = self.open_runs.get(key)
        if run_id:
            self.set_tags(run_id, tags)

    def close_trial(self, key: str, status: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, artifacts: Iterable[tuple[str, str | None]] = (),
                    step: int | None = None, tables: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """End a trial's run: FINISHED (complete), KILLED (pruned/interrupted) or FAILED. `tables`
        (artifact file -> rows) appear in the run's artifacts and the UI's evaluation view."""
        run_id = self.open_runs.pop(key, None)
        if run_id is None:
            return
        try:
            if metrics:
                self.log_metric_dict(run_id, metrics, step=step)
            if tags:
                self.set_tags(run_id, tags)
            for name, rows in (tables or {}).items():
                if rows:
                    import pandas as pd

                    self.client.log_table(run_id, data=pd.DataFrame(redact(rows)), artifact_file=name)
            for local, artifact_path in artifacts:
                if Path(local).is_dir():
                    self.client.log_artifacts(run_id, local, artifact_path)
                elif Path(local).exists():
                    self.client.log_artifact(run_id, local, artifact_path)
        finally:
            self.client.set_terminated(run_id, status=status)

    def running_children(self) -> list[Any]:
        """The parent's child runs still RUNNING (a dead sweep's, or another live machine's)."""
        if not self.parent_run_id:
            return []
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10000)

    def close_run(self, run_id: str, status: str, metrics: dict[str, float] | None = None,
                  tags: dict[str, str] | None = None) -> None:
        """End a run this sweep process did not open (one left RUNNING by a dead sweep)."""
        if metrics:
            self.log_metric_dict(run_id, metrics, step=None)
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def close_all(self, status: str, reason: str) -> list[str]:
        """Close every run still open (dead worker, Ctrl-C): nothing is left RUNNING."""
        closed = []
        for key in list(self.open_runs):
            self.close_trial(key, status, tags={"sweep.end_reason": reason[:5000]})
            closed.append(key)
        return closed

    # -- helpers --------------------------------------------------------------------------
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(k, v) for k, v in _tag_dict(tags).items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(run_id, tags=items[i:i + _PARAM_BATCH])

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(str(k), str(v)[:_MAX_PARAM_LEN]) for k, v in redact(params).items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(run_id, params=items[i:i + _PARAM_BATCH])

    def log_metric_dict(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + _METRIC_BATCH])


def _tag_dict(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as MLflow stores them: strings, masked by key name and by content, length-capped."""
    return {str(k): str(redact(v, str(k)))[:5000] for k, v in tags.items()}


def json_text(obj: Any) -> str:
    return json.dumps(redact(obj), indent=2, sort_keys=True, default=str)
