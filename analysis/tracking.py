"""Where the report goes in MLflow: resolve the tracking URI and log the report on the parent run."""

from __future__ import annotations

import os
from pathlib import Path

from sweeps.search.storage import absolute_sqlite, is_masked

DEFAULT_TRACKING_DB = "mlflow.db"
ARTIFACT_PATH = "report"


def resolve_tracking_uri(cli_uri: str | None, study_uri: str | None,
                         cwd: str | os.PathLike | None = None) -> str | None:
    """CLI value, else the study's recorded URI unless it was password-masked, else ./mlflow.db if present.

    A masked URI (`user:***@host`) cannot be used to connect; the caller must pass --tracking-uri.
    """
    base = Path(cwd or os.getcwd())
    if cli_uri:
        return absolute_sqlite(cli_uri, base)
    if study_uri and not is_masked(study_uri):
        return absolute_sqlite(study_uri, base)
    default = base / DEFAULT_TRACKING_DB
    return f"sqlite:///{default.resolve().as_posix()}" if default.exists() else None


def log_report(tracking_uri: str, run_id: str, files: list[Path]) -> list[str]:
    """Log report files as artifacts of the parent run under `report/`; returns the artifact paths.

    Raises MlflowException when the run does not exist in that store (wrong URI or id).
    """
    from mlflow.tracking import MlflowClient  # heavy; imported only when logging

    client = MlflowClient(tracking_uri=tracking_uri)
    client.get_run(run_id)  # fail early and clearly on a wrong store/run id
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)
    return [f"{ARTIFACT_PATH}/{p.name}" for p in files]

