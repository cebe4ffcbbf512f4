"""`python sweep.py` without -m: one fine-tune with the composed config, logged to MLflow the same
way a sweep trial is (params, step metrics, curves, adapter, environment)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeps.progress import console
from sweeps.tracking import RunBook, tracking_uri


class _DirectReporter:
    """The trainer's Reporter, writing straight to the run (one process, one writer)."""

    def __init__(self, runbook: RunBook, key: str):
        self.runbook, self.key = runbook, key

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.runbook.log_metrics(self.key, step, metrics)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.runbook.log_metrics(self.key, step, metrics)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        console.print(f"step {step}: {shown}")


def run_single(cfg: DictConfig) -> float:
    import trainer
    from hydra.core.hydra_config import HydraConfig

    from sweeps.curves import plot_curves
    from sweeps.worker import _adapter_sha256

    trainer.validate_config(cfg)
    trainer.preflight(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    uri = tracking_uri(cfg.mlflow.tracking_uri)
    runbook = RunBook(uri, str(cfg.mlflow.experiment_name))
    key = "single"
    tags = {"sweep.kind": "single", **{f"env.{k}": str(v) for k, v in trainer.environment_fingerprint().items()}}
    run_id = runbook.open_trial(key, "single-run", OmegaConf.to_container(cfg, resolve=True), tags, OmegaConf.to_yaml(cfg))
    console.print(f"MLflow run {run_id} in {uri}")
    try:
        result = trainer.run_trial(cfg, reporter=_DirectReporter(runbook, key), output_dir=output_dir)
    except BaseException as exc:
        runbook.close_trial(key, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                            tags={"error": f"{type(exc).__name__}: {exc}"[:4000]})
        raise
    curves = plot_curves(result.history, output_dir / "curves.png", "single run")
    artifacts = [(str(curves), None)] if curves else []
    if result.adapter_dir:
        artifacts.append((str(result.adapter_dir), "adapter"))
    runbook.close_trial(key, "FINISHED", {**result.metrics, "trainable_params": result.trainable_params,
                                          "train_runtime_s": result.train_runtime_s,
                                          "samples_per_second": result.samples_per_second,
                                          "peak_memory_mb": result.peak_memory_mb},
                        {"adapter_sha256": _adapter_sha256(result.adapter_dir) or ""}, artifacts, step=result.steps)
    console.print(f"done: {cfg.task.metric} = {result.objective:.4f} (run {run_id}, outputs in {os.path.relpath(output_dir)})")
    return float(result.objective)
