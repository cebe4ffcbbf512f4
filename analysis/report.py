"""Build the sweep report (report.md, self-contained report.html, PNGs) and log it to MLflow.

CLI: python -m analysis.report [--storage URL] [--study NAME] [--out DIR] [--tracking-uri URI] [--no-mlflow]
(also `lora-sweep report`). A sweep does not build it: it ends with the command that does.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd

from analysis import figures, sections
from analysis.context import ReportData, load_report_data
from analysis.document import to_html, to_markdown
from analysis.importance import param_importances
from analysis.reproducibility import fresh
from analysis.tracking import log_report, resolve_tracking_uri
from sweeps.search.storage import journal_path, latest_study_name, mask_url, open_storage, storage_url

logger = logging.getLogger("analysis.report")  # not __main__ under `python -m`

# key → (file name, caption); the search-space figures shown under "Figures", in this order.
SEARCH_FIGURES = {
    "history": ("optimization_history.png", "Optimisation history (best so far in red)"),
    "slices": ("slices.png", "Objective vs each hyperparameter"),
    "parallel": ("parallel_coordinates.png", "Parallel coordinates"),
    "rank_alpha": ("rank_alpha_heatmap.png", "Mean objective per LoRA rank r × lora_alpha"),
    "target_modules": ("target_modules.png", "Target-module presets (mean ± std)"),
    "pareto": ("pareto.png", "Objective vs trainable parameters, Pareto front in red"),
}
OTHER_FIGURES = {
    "importance": "importance.png",
    "expected_max": "expected_max.png",
    "replicates": "replicates.png",
}
ALL_PNGS = [name for name, _ in SEARCH_FIGURES.values()] + list(OTHER_FIGURES.values())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def _storage_label(storage: optuna.storages.BaseStorage | str | None) -> str:
    if storage is None or isinstance(storage, str):
        return mask_url(storage_url(storage))
    url = getattr(storage, "url", None)
    return mask_url(url) if isinstance(url, str) else type(storage).__name__


def _draw(draw: Callable[[Path], Path], path: Path) -> sections.FigureResult:
    """Run one figure; a skip or a plotting error becomes the reason shown in the report."""
    try:
        return draw(path)
    except figures.NotEnoughData as exc:
        return str(exc)
    except Exception as exc:  # a broken figure must not cost the whole report
        logger.warning("figure %s failed: %s", path.name, exc, exc_info=True)
        return f"failed ({type(exc).__name__}: {exc})"
    finally:
        plt.close("all")


def render_figures(d: ReportData, importance_table: pd.DataFrame, out: Path) -> dict[str, sections.FigureResult]:
    """Write every figure into `out`; returns key → PNG path or skip reason."""
    m, mx = d.metric, d.maximize
    draws_values, draws_label = d.expected_max_sample()
    draws: dict[str, Callable[[Path], Path]] = {
        "history": lambda p: figures.optimization_history(d.frame, p, m, mx),
        "slices": lambda p: figures.slices(d.study, d.frame, p, m),
        "parallel": lambda p: figures.parallel_coordinates(d.study, d.frame, p, m),
        "rank_alpha": lambda p: figures.rank_alpha_heatmap(d.frame, p, m),
        "target_modules": lambda p: figures.target_modules(d.frame, p, m),
        "pareto": lambda p: figures.pareto_plot(d.frame, p, m, d.directions[0]),
        "importance": lambda p: figures.importance_bars(importance_table, p),
        "expected_max": lambda p: figures.expected_max_curve(draws_values, p, m, mx, draws_label),
        "replicates": lambda p: figures.replicate_scores(d.reps, p, m, mx, fresh(d.reps, d.tuned_seeds)),
    }
    names = {**{k: v[0] for k, v in SEARCH_FIGURES.items()}, **OTHER_FIGURES}
    return {key: _draw(draw, out / names[key]) for key, draw in draws.items()}


def _log(d: ReportData, files: list[Path], tracking_uri: str | None) -> None:
    run_id = d.attrs.get("mlflow_parent_run_id")
    uri = resolve_tracking_uri(tracking_uri, d.attrs.get("mlflow_tracking_uri"))
    if not run_id or not uri:
        logger.warning("report not logged to MLflow: %s", "the study has no mlflow_parent_run_id" if not run_id
                       else "no usable tracking URI (masked in the study; pass --tracking-uri)")
        return
    try:
        paths = log_report(uri, str(run_id), files)
    except Exception as exc:  # the report on disk is still useful; say why MLflow did not get it
        logger.warning("report not logged to MLflow run %s at %s: %s", run_id, mask_url(uri), exc)
        return
    logger.info("logged %d report artifacts to MLflow run %s (%s)", len(paths), run_id, mask_url(uri))


def build_report(storage: optuna.storages.BaseStorage | str | None, study_name: str | None,
                 out_dir: str | Path | None, tracking_uri: str | None = None, log_to_mlflow: bool = True) -> Path:
    """Write report.md, report.html and the PNGs for `study_name` into `out_dir`; return that folder.

    storage: an open Optuna storage or a URL (None → ./optuna-journal.log); study_name None → the
    latest search study; out_dir None → reports/<study>. Logs the files to the study's MLflow parent
    run under `report/` when `log_to_mlflow` and a usable tracking URI exist.
    """
    label = _storage_label(storage)
    if storage is None or isinstance(storage, str):
        journal = journal_path(storage_url(storage))
        if journal is not None and not journal.exists():  # opening would create an empty journal file
            raise LookupError(f"no Optuna journal at {journal}; pass --storage")
        storage = open_storage(storage)
    study_name = study_name or latest_study_name(storage)
    if study_name not in optuna.get_all_study_names(storage):
        raise LookupError(f"no study {study_name!r} in {label}")
    d = load_report_data(storage, study_name)
    out = Path(out_dir) if out_dir is not None else Path("reports") / _safe_name(study_name)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ALL_PNGS:  # a re-run with less data must not leave (and log) old figures behind
        (out / stale).unlink(missing_ok=True)

    imp_table, imp_notes = param_importances(d.study, d.frame)
    results = render_figures(d, imp_table, out)
    blocks = (sections.summary(d, label) + sections.leaderboard(d)
              + sections.importance(imp_table, imp_notes, results["importance"])
              + sections.figures(results, {k: caption for k, (_, caption) in SEARCH_FIGURES.items()})
              + sections.more_trials(d, results["expected_max"])
              + sections.reproducibility(d, results["replicates"])
              + sections.skipped_overview(results))
    title = f"Sweep report: {study_name}"
    (out / "report.md").write_text(to_markdown(title, blocks), encoding="utf-8")
    (out / "report.html").write_text(to_html(title, blocks), encoding="utf-8")

    if log_to_mlflow:
        pngs = [p for p in results.values() if isinstance(p, Path)]
        _log(d, [out / "report.md", out / "report.html", *pngs], tracking_uri)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL or journal file (default ./optuna-journal.log)")
    parser.add_argument("--study", default=None, help="study name (default: the latest search study)")
    parser.add_argument("--out", default=None, help="output folder (default reports/<study>)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the study's, unless masked; else ./mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # our progress lines, without matplotlib's/MLflow's INFO chatter
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        out = build_report(args.storage, args.study, args.out, args.tracking_uri, not args.no_mlflow)
    except LookupError as exc:  # no storage / no study / unknown study name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
