"""The loss/metric curve PNG logged with every trial."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path, title: str) -> Path | None:
    """Train loss (left) and eval metrics (right) against optimizer step."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(9, 3.2))
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
