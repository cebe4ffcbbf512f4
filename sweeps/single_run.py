"""`python sweep.py` without -m: one fine-tune with the composed config, logged to MLflow the same
way a sweep trial is (params, step metrics, curves, adapter, environment).

The MLflow writing happens in a writer process (sweeps/run_writer.py), started first so that its
imports overlap this process's torch import; this process trains and sends it what to log."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeps.progress import console
from sweeps.run_writer import RunWriter


class _WriterReporter:
    """The trainer's Reporter, feeding the writer process."""

    def __init__(self, writer: RunWriter):
        self.writer = writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.writer.send("log_metrics", step=step, metrics=metrics)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.writer.send("log_metrics", step=step, metrics=metrics)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        console.print(f"step {step}: {shown}")


def _announce(kind: str, value) -> None:
    if kind == "run":
        console.print(f"MLflow run {value[0]} in {value[1]}")
    elif kind == "error":
        console.print(f"[red]MLflow: {value}")


def run_single(cfg: DictConfig) -> float:
    writer = RunWriter(cfg.mlflow.tracking_uri, on_reply=_announce)  # first: its start-up overlaps ours
    try:
        return _train_and_log(cfg, writer)
    finally:
        if writer.proc.poll() is None and not writer.proc.stdin.closed:
            writer.proc.stdin.close()  # on an error before the run was opened: nothing to write


def _train_and_log(cfg: DictConfig, writer: RunWriter) -> float:
    import trainer
    from hydra.core.hydra_config import HydraConfig

    from sweeps.worker import _adapter_sha256

    trainer.validate_config(cfg)
    trainer.preflight(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    tags = {"sweep.kind": "single", **{f"env.{k}": str(v) for k, v in trainer.environment_fingerprint().items()}}
    writer.send("open", experiment=str(cfg.mlflow.experiment_name),
                run_name="single-run", config=OmegaConf.to_container(cfg, resolve=True), tags=tags,
                config_yaml=OmegaConf.to_yaml(cfg))
    try:
        result = trainer.run_trial(cfg, reporter=_WriterReporter(writer), output_dir=output_dir)
    except BaseException as exc:
        try:
            writer.send("close", status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                        tags={"error": f"{type(exc).__name__}: {exc}"[:4000]})
            writer.finish()
        except RuntimeError as writer_error:  # the writer itself failed: report both, raise the first
            console.print(f"[red]{writer_error}")
        raise
    artifacts = [(str(result.adapter_dir), "adapter")] if result.adapter_dir else []
    writer.send("close", status="FINISHED", metrics={**result.metrics, "trainable_params": result.trainable_params,
                                                     "train_runtime_s": result.train_runtime_s,
                                                     "samples_per_second": result.samples_per_second,
                                                     "peak_memory_mb": result.peak_memory_mb},
                tags={"adapter_sha256": _adapter_sha256(result.adapter_dir) or ""}, artifacts=artifacts,
                step=result.steps,
                curves={"history": result.history, "path": str(output_dir / "curves.png"), "title": "single run"})
    writer.finish()
    console.print(f"done: {cfg.task.metric} = {result.objective:.4f} (run {writer.run_id}, outputs in "
                  f"{os.path.relpath(output_dir)})")
    return float(result.objective)
