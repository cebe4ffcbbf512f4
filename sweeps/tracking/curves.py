"""The loss/metric curve PNG logged with every trial."""

from __future__ import annotations

from pathlib import Path
from trainer.trace import traced


@traced("sweep.curves")
def plot_curves(history: list[dict], path: Path, title: str) -> Path | None:
    """Train loss (left) and eval metrics (right) against optimizer step."""
    if not history:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, nothing to close

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    fig = Figure(figsize=(9, 3.2))
    # fixed margins: tight_layout measured every text extent and cost more than the drawing
    fig.subplots_adjust(left=0.07, right=0.92, bottom=0.16, top=0.84, wspace=0.32)
    ax_l, ax_r = fig.subplots(1, 2)
    if train:
        ax_l.plot(*zip(*train), marker=".", lw=1)
    ax_l.set(xlabel="step", ylabel="train loss", title="training loss")
    for key in sorted({k for h in evals for k in h if k.startswith("eval_") and k != "eval_loss"}):
        pts = [(h["step"], h[key]) for h in evals if key in h]
        ax_r.plot(*zip(*pts), marker="o", lw=1, label=key)
    if any("eval_loss" in h for h in evals):
        twin = ax_r.twinx()
        twin.plot(*zip(*[(h["step"], h["eval_loss"]) for h in evals if "eval_loss" in h]), "k--", lw=1, label="eval_loss")
        twin.set_ylabel("eval loss")
    ax_r.set(xlabel="step", title="evaluation")
    if ax_r.get_legend_handles_labels()[0]:
        ax_r.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
