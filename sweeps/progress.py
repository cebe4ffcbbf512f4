"""Console: a progress bar over trials (done / pruned / failed, best so far, ETA) and the final
table of top trials with their MLflow run ids."""

from __future__ import annotations

import sys
import time

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


class SweepProgress:
    """Study-wide counts (all workers, all machines), refreshed at most once a second."""

    def __init__(self, study: optuna.Study, n_trials: int, label: str):
        self.study, self.n_trials = study, n_trials
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task = self.progress.add_task(label, total=n_trials, status="")
        self._last = 0.0

    def __enter__(self) -> "SweepProgress":
        self.progress.start()
        self.refresh(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.refresh(force=True)
        self.progress.stop()

    def refresh(self, *_: object, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < 1.0:
            return
        self._last = time.monotonic()
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        status = (f"complete {count[TrialState.COMPLETE]} · pruned {count[TrialState.PRUNED]} · "
                  f"failed {count[TrialState.FAIL]} · running {count[TrialState.RUNNING]} · best {best_text(self.study)}")
        self.progress.update(self.task, completed=min(done, self.n_trials), status=status)


def best_text(study: optuna.Study) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        return "-"


def top_trials_table(study: optuna.Study, k: int = 10, title: str = "Top trials") -> Table:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: t.values[0], reverse=reverse)
    keys = sorted({k for t in complete for k in t.params})
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("value" if len(study.directions) == 1 else "values", justify="right")
    for key in keys:
        table.add_column(key.split(".")[-1])
    table.add_column("trainable", justify="right")
    table.add_column("MLflow run id")
    for trial in complete[:k]:
        value = ", ".join(f"{v:.4f}" if abs(v) < 1e4 else f"{v:.0f}" for v in trial.values)
        params = [_fmt(trial.params.get(key)) for key in keys]
        table.add_row(str(trial.number), value, *params, f"{trial.user_attrs.get('trainable_params', '')}",
                      str(trial.user_attrs.get("mlflow_run_id", "")))
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def data_fit_note(stats: dict[str, float]) -> str | None:
    """One console line when conversations were cut or skipped to fit train.max_seq_length."""
    parts = [f"{split}: {int(stats.get(f'{split}_rows_truncated', 0))} truncated, "
             f"{int(stats.get(f'{split}_rows_dropped', 0))} dropped" for split in ("train", "eval")]
    if not any(v for k, v in stats.items() if k.endswith(("_truncated", "_dropped"))):
        return None
    return f"[yellow]conversations over train.max_seq_length[/] ({'; '.join(parts)}); the counts are on every MLflow run"
