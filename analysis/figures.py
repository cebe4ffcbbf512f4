"""PNG figures for the sweep report (matplotlib, Agg backend).

Each function writes one PNG and returns its path, or raises `NotEnoughData` with a reason the
report prints instead of the figure. Study-level plots that need the search distributions (log
axes, categorical ticks) come from `optuna.visualization.matplotlib`; the rest are drawn from
frames so they work on any study shape.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial  # noqa: E402

from analysis.frames import complete, param_columns  # noqa: E402
from analysis.stats import expected_max, expected_max_std, pareto_front  # noqa: E402

PRESET_ORDER = ("qv", "attn", "attn_mlp", "all_linear")
KIND_COLORS = {"crossed": "tab:purple", "paired": "tab:brown", "seed": "tab:blue", "data_seed": "tab:orange",
               "both": "tab:green", "determinism": "tab:gray"}
DPI = 110


class NotEnoughData(Exception):
    """A figure was skipped; the message says why (shown in the report)."""


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _new(width: float = 7.0, height: float = 4.2) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def _need_complete(frame: pd.DataFrame, n: int = 1) -> pd.DataFrame:
    done = complete(frame)
    if len(done) < n:
        raise NotEnoughData(f"needs at least {n} completed trial(s), have {len(done)}")
    return done


def _first_objective(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def optimization_history(frame: pd.DataFrame, path: Path, metric: str, maximize: bool) -> Path:
    """Objective per trial with the best-so-far line: did the search still improve at the end?"""
    done = _need_complete(frame)
    fig, ax = _new()
    pruned = frame[frame["state"] == "PRUNED"]
    ax.scatter(done["number"], done["value"], s=22, label="complete", color="tab:blue", zorder=3)
    if "last_intermediate" in pruned.columns and pruned["last_intermediate"].notna().any():
        ax.scatter(pruned["number"], pruned["last_intermediate"], s=18, marker="x", color="tab:gray",
                   label="pruned (last reported)")
    best = done["value"].cummax() if maximize else done["value"].cummin()
    ax.step(done["number"], best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial number", ylabel=metric, title="Optimisation history")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def expected_max_curve(values: Sequence[float], path: Path, metric: str, maximize: bool, sample: str = "") -> Path:
    """Expected best score vs number of trials (unbiased subset average, Dodge et al. 2021), ± one
    std band; `sample` says which trials were treated as the draws (shown under the title). The
    curve stops at N: an estimate from N trials cannot look past N, and the figure says so."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise NotEnoughData(f"needs at least 2 finished trials, have {v.size}")
    mean = expected_max(v, maximize=maximize)
    std = expected_max_std(v, maximize=maximize)
    n = np.arange(1, v.size + 1)
    fig, ax = _new()
    ax.plot(n, mean, marker="o", ms=3, color="tab:blue", label=f"E[{'max' if maximize else 'min'}]")
    ax.fill_between(n, mean - std, mean + std, alpha=0.25, color="tab:blue", label="± 1 std")
    ax.set(xlabel="number of trials (budget n)", ylabel=f"expected best {metric}",
           title=f"Expected best validation score vs budget\n(estimated from {v.size} trials; cannot look past {v.size})")
    ax.legend(loc="best", fontsize=8, title_fontsize=6,
              title="\n".join(textwrap.wrap(f"draws: {sample}", 60)) if sample else None)
    return _save(fig, path)


def _optuna_plot(draw: Callable[[], object], path: Path, size: tuple[float, float]) -> Path:
    """Run an optuna matplotlib plot without letting its ggplot style leak into later figures."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        axes = draw()
        fig = np.atleast_1d(axes).ravel()[0].figure
        fig.set_size_inches(*size)
        return _save(fig, path)


def _varying_params(frame: pd.DataFrame) -> list[str]:
    done = complete(frame)
    return [c[len("param."):] for c in param_columns(done) if done[c].astype(str).nunique(dropna=True) > 1]


def slices(study: optuna.Study, frame: pd.DataFrame, path: Path, metric: str) -> Path:
    """Objective vs each swept hyperparameter (log x for log-scale params)."""
    _need_complete(frame)
    params = _varying_params(frame)
    if not params:
        raise NotEnoughData("no hyperparameter varies across the completed trials")
    return _optuna_plot(lambda: optuna.visualization.matplotlib.plot_slice(
        study, params=params, target=_first_objective(study), target_name=metric), path,
        (max(5.0, 3.0 * len(params) + 1.5), 4.0))


def parallel_coordinates(study: optuna.Study, frame: pd.DataFrame, path: Path, metric: str) -> Path:
    """All swept hyperparameters of each trial as one line, coloured by the objective."""
    _need_complete(frame, 2)
    params = _varying_params(frame)
    if not params:
        raise NotEnoughData("no hyperparameter varies across the completed trials")
    return _optuna_plot(lambda: optuna.visualization.matplotlib.plot_parallel_coordinate(
        study, params=params, target=_first_objective(study), target_name=metric), path,
        (max(7.0, 1.8 * len(params) + 3.0), 5.5))


def rank_alpha_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with numeric `r` and `alpha` columns; alpha = alpha_ratio·r when the ratio was swept."""
    done = _need_complete(frame)
    if "param.lora.r" not in done.columns:
        raise NotEnoughData("lora.r was not swept")
    r = pd.to_numeric(done["param.lora.r"], errors="coerce")
    if "param.lora.lora_alpha" in done.columns:
        alpha = pd.to_numeric(done["param.lora.lora_alpha"], errors="coerce")
    elif "param.lora.alpha_ratio" in done.columns:
        alpha = pd.to_numeric(done["param.lora.alpha_ratio"], errors="coerce") * r
    else:
        raise NotEnoughData("neither lora.lora_alpha nor lora.alpha_ratio was swept")
    out = pd.DataFrame({"r": r, "alpha": alpha, "value": done["value"].astype(float)}).dropna()
    if out.empty:
        raise NotEnoughData("no completed trial has both r and alpha")
    return out


def rank_alpha_heatmap(frame: pd.DataFrame, path: Path, metric: str) -> Path:
    """Mean objective per (r, lora_alpha) cell: shows whether the alpha/r scaling matters."""
    data = rank_alpha_frame(frame)
    grid = data.pivot_table(index="alpha", columns="r", values="value", aggfunc="mean")
    counts = data.pivot_table(index="alpha", columns="r", values="value", aggfunc="size")
    if grid.notna().sum().sum() < 2:
        raise NotEnoughData("fewer than 2 (r, alpha) cells have data")
    fig, ax = _new(1.2 * grid.shape[1] + 3, 0.6 * grid.shape[0] + 2.5)
    cells = grid.to_numpy(dtype=float)
    im = ax.imshow(cells, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{i:g}" for i in grid.index])
    for (i, j), val in np.ndenumerate(cells):
        if np.isfinite(val):  # dark text on the bright end of viridis
            ax.text(j, i, f"{val:.3g}\n(n={int(counts.iat[i, j])})", ha="center", va="center", fontsize=7,
                    color="black" if im.norm(val) > 0.6 else "white")
    ax.set(xlabel="LoRA rank r", ylabel="lora_alpha", title=f"Mean {metric} per (r, alpha)")
    fig.colorbar(im, ax=ax, label=metric)
    return _save(fig, path)


def _preset_key(name: str) -> tuple[int, str]:
    return (PRESET_ORDER.index(name) if name in PRESET_ORDER else len(PRESET_ORDER), name)


def target_modules(frame: pd.DataFrame, path: Path, metric: str) -> Path:
    """Mean ± std of the objective per target-module preset (qv / attn / attn_mlp / all_linear)."""
    done = _need_complete(frame)
    col = "param.lora.target_modules"
    if col not in done.columns:
        raise NotEnoughData("lora.target_modules was not swept")
    if done[col].nunique() < 2:
        raise NotEnoughData("fewer than 2 target-module presets among completed trials")
    g = done.groupby(done[col].astype(str))["value"].agg(["mean", "std", "size"])
    g = g.loc[sorted(g.index, key=_preset_key)]
    fig, ax = _new(max(4.0, 1.3 * len(g) + 2))
    labels = [f"{name}\n(n={n})" for name, n in zip(g.index, g["size"], strict=True)]
    ax.bar(labels, g["mean"], yerr=g["std"].fillna(0.0), capsize=4, color="tab:blue", alpha=0.8)
    low = float((g["mean"] - g["std"].fillna(0.0)).min())
    high = float((g["mean"] + g["std"].fillna(0.0)).max())
    pad = 0.1 * (high - low) if high > low else 0.05 * max(abs(high), 1e-9)
    ax.set_ylim(low - pad, high + 2 * pad)
    ax.set(xlabel="target-module preset", ylabel=f"{metric} (mean ± std)", title="Target modules")
    return _save(fig, path)


def _cost_column(frame: pd.DataFrame) -> str:
    for col in ("trainable_params", "value_1"):
        if col in frame.columns and pd.to_numeric(frame[col], errors="coerce").notna().any():
            return col
    raise NotEnoughData("no trial recorded trainable_params")


def pareto_plot(frame: pd.DataFrame, path: Path, metric: str, direction: str) -> Path:
    """Objective vs trainable parameters with the Pareto front (best score per adapter size)."""
    done = _need_complete(frame)
    cost = _cost_column(done)
    x = pd.to_numeric(done[cost], errors="coerce").to_numpy(dtype=float)
    y = done["value"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise NotEnoughData("no completed trial has both the objective and trainable_params")
    x, y, numbers = x[ok], y[ok], done["number"].to_numpy()[ok]
    front = pareto_front(np.column_stack([y, x]), [direction, "minimize"])
    fig, ax = _new()
    ax.scatter(x[~front], y[~front], s=22, color="tab:gray", alpha=0.7, label="dominated")
    ax.scatter(x[front], y[front], s=30, color="tab:red", zorder=3, label="Pareto front")
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="tab:red", alpha=0.6)
    for xi, yi, n in zip(x[front], y[front], numbers[front], strict=True):
        ax.annotate(f"#{n}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if x.min() > 0 and x.max() / x.min() > 10:
        ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=metric, title="Score vs adapter size")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def importance_bars(table: pd.DataFrame, path: Path) -> Path:
    """fANOVA and PED-ANOVA importances side by side."""
    methods = [m for m in ("fANOVA", "PED-ANOVA") if m in table.columns and table[m].notna().any()]
    if table.empty or not methods:
        raise NotEnoughData("no importances were computed")
    fig, axes = plt.subplots(1, len(methods), figsize=(6.5 * len(methods), 0.45 * len(table) + 1.8), squeeze=False,
                             layout="constrained")
    for ax, method in zip(axes[0], methods, strict=True):
        data = table[["param", method]].dropna().sort_values(method)
        ax.barh(data["param"], data[method], color="tab:blue")
        ax.set(xlabel="importance (normalised)", title=method, xlim=(0, max(1e-9, data[method].max()) * 1.1))
    fig.suptitle("Hyperparameter importance")
    return _save(fig, path)


def replicate_scores(replicates: pd.DataFrame, path: Path, metric: str, maximize: bool,
                     counted: pd.DataFrame | None = None) -> Path:
    """Replicate scores per reproduced config (points by seed kind) with the sweep-time score
    marked; the boxes hold only `counted` (the replicates the reproduced means use; default: all
    but determinism re-runs), so the figure shows the same numbers as the table."""
    if replicates.empty:
        raise NotEnoughData("no completed replicates")
    sweep = replicates.groupby("config")["sweep_value"].first()
    configs = list(sweep.sort_values(ascending=not maximize, kind="stable").index)
    fig, ax = _new(max(5.0, 1.1 * len(configs) + 2.5))
    rng = np.random.default_rng(0)
    sampled = replicates[replicates["seed_kind"] != "determinism"] if counted is None else counted
    boxes = [sampled.loc[sampled["config"] == c, "value"].to_numpy(dtype=float) for c in configs]
    if any(len(b) for b in boxes):
        ax.boxplot([b if len(b) else [np.nan] for b in boxes], positions=range(len(configs)), widths=0.5,
                   showfliers=False, medianprops={"color": "black"})
    for kind, color in KIND_COLORS.items():
        sub = replicates[replicates["seed_kind"] == kind]
        if sub.empty:
            continue
        xs = [configs.index(c) + rng.uniform(-0.15, 0.15) for c in sub["config"]]
        ax.scatter(xs, sub["value"], s=16, color=color, alpha=0.8, label=kind, zorder=3)
    ax.scatter(range(len(configs)), sweep.loc[configs], marker="*", s=160, color="tab:red", zorder=4,
               label="sweep-time score")
    ax.set_xticks(range(len(configs)), [f"#{c}" for c in configs])
    ax.set(xlabel="search trial (sweep-time rank order)", ylabel=metric, title="Reproduced scores per config")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
