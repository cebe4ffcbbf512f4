"""`python sweep.py` without -m: one fine-tune with the composed config, logged to MLflow the same
way a sweep trial is (params, step metrics, curves, adapter, environment).

The MLflow writing happens in a writer process (sweeps/tracking/writer.py), started first so that its
imports overlap this process's torch import; this process trains and sends it what to log."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from sweeps.runtime.events import CurvesDrawn, MetricsLogged, RunClosed, RunOpened
from sweeps.progress import console, data_fit_note
from sweeps.tracking.writer import KEY, RunWriter
from trainer.trace import traced


class _WriterReporter:
    """The trainer's Reporter, feeding the writer process."""

    def __init__(self, writer: RunWriter):
        self.writer = writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.writer.send(MetricsLogged(KEY, step, metrics))

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.writer.send(MetricsLogged(KEY, step, metrics))
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        console.print(f"step {step}: {shown}")


def _announce(kind: str, value) -> None:
    from sweeps.tracking.redact import scrub_text

    if kind == "run":
        console.print(f"MLflow run {value[0]} in {scrub_text(value[1])}")
    elif kind == "error":
        console.print(f"[red]MLflow: {scrub_text(str(value))}")


@traced("single_run")
def run_single(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    writer = RunWriter(cfg.mlflow.tracking_uri, str(cfg.mlflow.experiment_name), on_reply=_announce)  # first: its start-up overlaps ours
    try:
        hydra_cfg = HydraConfig.get()
        _redact_hydra_outputs(Path(hydra_cfg.runtime.output_dir), hydra_cfg.output_subdir)
        return _train_and_log(cfg, writer)
    finally:
        if writer.proc.poll() is None and not writer.proc.stdin.closed:
            writer.proc.stdin.close()  # on an error before the run was opened: nothing to write


def _redact_hydra_outputs(output_dir: Path, subdir: str | None) -> None:
    """Hydra has already written the composed config and the command-line overrides into
    `<output_dir>/.hydra/` and opened `<job>.log` there: mask the secrets in those files and in
    every later log line, as the MLflow run has them."""
    from sweeps.tracking.redact import install_log_scrubbing, redact_yaml

    install_log_scrubbing()
    folder = output_dir / subdir if subdir else None  # hydra.output_subdir=null: Hydra wrote none
    if folder is None or not folder.is_dir():
        return
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        clean = redact_yaml(text)
        if clean != text:
            path.write_text(clean)


def _train_and_log(cfg: DictConfig, writer: RunWriter) -> float:
    import trainer
    from hydra.core.hydra_config import HydraConfig

    from sweeps.runtime.trial import SAMPLES_TABLE, adapter_sha256

    trainer.validate_config(cfg)
    report = trainer.preflight(cfg)
    if report.llm_defaults.values:  # task=sft's `auto` keys: logged and trained as the numbers they resolved to
        console.print("[bold]LLM defaults[/] (auto; set a key to override it):")
        for line in report.llm_defaults.lines():
            console.print(f"  {escape(line)}")
        cfg = report.llm_defaults.apply(cfg)
    note = data_fit_note(report.data_stats)
    if note:
        console.print(note)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    tags = {"sweep.kind": "single", **{f"env.{k}": str(v) for k, v in trainer.environment_fingerprint().items()}}
    writer.send(RunOpened(KEY, "single-run", OmegaConf.to_container(cfg, resolve=True), tags,
                          OmegaConf.to_yaml(cfg, resolve=True)))  # what ran, as a sweep trial's
    try:
        result = trainer.run_trial(cfg, reporter=_WriterReporter(writer), output_dir=output_dir)
    except BaseException as exc:
        try:
            writer.send(RunClosed(KEY, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                                  tags={"error": f"{type(exc).__name__}: {exc}"[:4000]}))
            writer.finish()
        except RuntimeError as writer_error:  # the writer itself failed: report both, raise the first
            console.print(f"[red]{writer_error}")
        raise
    artifacts = [(str(result.adapter_dir), "adapter")] if result.adapter_dir else []
    writer.send(CurvesDrawn(KEY, result.history, str(output_dir / "curves.png"), "single run"))
    writer.send(RunClosed(KEY, "FINISHED", result.summary_metrics(),
                          {"adapter_sha256": adapter_sha256(result.adapter_dir) or ""}, artifacts, result.steps,
                          {SAMPLES_TABLE: result.samples}))
    writer.finish()
    console.print(f"done: {cfg.task.metric} = {result.objective:.4f} (run {writer.run_id}, outputs in "
                  f"{os.path.relpath(output_dir)})")
    return float(result.objective)
