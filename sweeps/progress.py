"""Console: a progress bar over trials (done / pruned / failed, best so far, ETA) and the final
table of top trials with their MLflow run ids. Where the output is not a terminal (a log file,
nohup, a cluster job) a bar would print nothing until the end, so each finished trial gets a line."""

from __future__ import annotations

import sys
import time

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sweeps.search.storage import MEMORY_SKIP_ATTR
from sweeps.search.study import top_trials

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # logs: room for the whole table


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class SweepProgress:
    """Study-wide counts (all workers, all machines), refreshed at most once a second: a bar on a
    terminal, else one line per finished trial."""

    def __init__(self, study: optuna.Study, n_trials: int, label: str, lines: bool | None = None):
        self.study, self.n_trials, self.label = study, n_trials, label
        self.lines = not console.is_terminal if lines is None else lines
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task = self.progress.add_task(label, total=n_trials, status="")
        self._last = 0.0
        self._started = time.monotonic()
        # trials that had finished before this sweep (a resumed study) are not announced again
        self._announced = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}

    def __enter__(self) -> "SweepProgress":
        if not self.lines:
            self.progress.start()
        self.refresh(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.refresh(force=True)
        if not self.lines:
            self.progress.stop()

    def refresh(self, *_: object, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < 1.0:
            return
        self._last = time.monotonic()
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        skipped = sum(MEMORY_SKIP_ATTR in t.user_attrs for t in trials)  # stored PRUNED, never trained
        done = count[TrialState.COMPLETE] + count[TrialState.PRUNED] - skipped
        if self.lines:
            self._print_finished(trials, done)
            return
        status = (f"complete {count[TrialState.COMPLETE]} · pruned {count[TrialState.PRUNED] - skipped} · "
                  + (f"skipped {skipped} · " if skipped else "") +
                  f"failed {count[TrialState.FAIL]} · running {count[TrialState.RUNNING]} · best {best_text(self.study)}")
        self.progress.update(self.task, completed=min(done, self.n_trials), status=status)

    def _print_finished(self, trials: list[optuna.trial.FrozenTrial], done: int) -> None:
        """One line per newly finished trial, as Optuna's own logging does: number, state, value,
        best so far, trials done, elapsed."""
        new = sorted((t for t in trials if t.state in FINISHED and t.number not in self._announced),
                     key=lambda t: t.number)
        if not new:
            return
        best, elapsed = best_text(self.study), time.monotonic() - self._started
        for t in new:
            self._announced.add(t.number)
            state = "SKIPPED" if MEMORY_SKIP_ATTR in t.user_attrs else t.state.name
            last = max(t.intermediate_values) if t.intermediate_values else None
            value = (", ".join(f"{v:.4f}" for v in t.values) if t.values else
                     f"{t.intermediate_values[last]:.4f} at step {last}" if last is not None else "-")
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
            console.print(f"{self.label}: trial #{t.number} {state} value {value} · best {best} · "
                          f"{min(done, self.n_trials)}/{self.n_trials} done · {elapsed:.0f}s · {params}",
                          soft_wrap=True, markup=False)


def best_text(study: optuna.Study) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        return "-"


# The score of the greedy answers (task=sft), shown beside a loss objective, which says nothing of it.
ANSWER_METRICS = ("eval_exact_match",)


def top_trials_table(study: optuna.Study, k: int = 10, title: str = "Top trials") -> Table:
    complete = top_trials(study)
    keys = sorted({k for t in complete for k in t.params})
    objectives = study.user_attrs.get("objectives") or []
    value_name = ", ".join(objectives) or ("value" if len(study.directions) == 1 else "values")
    answers = [m for m in ANSWER_METRICS if m not in objectives and any(m in t.user_attrs.get("metrics", {}) for t in complete)]
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column(value_name, justify="right", min_width=len(value_name))
    for name in answers:
        table.add_column(name, justify="right", min_width=len(name))
    for key in keys:
        table.add_column(key.split(".")[-1])
    table.add_column("trainable", justify="right")
    table.add_column("MLflow run id", min_width=32, no_wrap=True)  # whole: users copy it
    for trial in complete[:k]:
        value = ", ".join(f"{v:.4f}" if abs(v) < 1e4 else f"{v:.0f}" for v in trial.values)
        params = [_fmt(trial.params.get(key)) for key in keys]
        scores = [_fmt(trial.user_attrs.get("metrics", {}).get(name)) for name in answers]
        table.add_row(f"{trial.number}{' base' if trial.user_attrs.get('base') else ''}", value, *scores, *params,
                      f"{trial.user_attrs.get('trainable_params', '')}",
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


def base_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial that ran the user's own config (hydra.sweeper.include_base)."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("base")), None)


def gain_over_base(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, float] | None:
    """(base trial, best value minus the base's, signed so that > 0 is better)."""
    base = base_trial(study)
    if base is None or len(study.directions) != 1:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return base, sign * (study.best_value - base.value)


def base_text(study: optuna.Study) -> str | None:
    found = gain_over_base(study)
    if found is None:
        return None
    base, gain = found
    if study.best_trial.number == base.number:
        return f"the base config (#{base.number}, your defaults and overrides) is the best trial: {base.value:.4f}"
    return (f"best #{study.best_trial.number} {study.best_value:.4f} vs the base config #{base.number} "
            f"{base.value:.4f}: {gain:+.4f}")
