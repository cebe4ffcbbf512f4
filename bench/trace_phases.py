"""Per-phase seconds from the runtime's own trace (trainer/trace.py, `LORA_SWEEP_TRACE=<file>`).

The runtime writes one line per finished phase: name, start, end, process. A phase's time here is
exclusive: the phases nested inside it (same process, inside its time window) are subtracted,
so every second is counted once. The benchmarks' tables use the labels below; a traced phase
without a label shows under its own name, so a phase added to the runtime is never dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

TRACE_ENV = "LORA_SWEEP_TRACE"  # the runtime's switch (trainer.trace.TRACE_ENV)
COLD = " (cached after the first trial)"

# trace phase -> table label, shared by the sweep and the single run
LABELS = {
    "trainer.tokenize": "tokenisation (tokenizer, data, encode)",
    "trainer.model_load": "model load + 4-bit quantisation",
    "trainer.lora_setup": "LoRA setup",
    "trainer.lora_removal": "LoRA removal (base back to the cache)",
    "trainer.train": "train",
    "trainer.eval": "eval",
    "trainer.run_trial": "trainer other (seeding, validation, collator, result)",
    "trainer.validate_config": "trainer other (seeding, validation, collator, result)",
    "trainer.save_adapter": "adapter save + sha256",
    "worker.adapter_sha256": "adapter save + sha256",
    "trainer.fingerprint": "environment fingerprint",
    "worker.trial": "worker bookkeeping (events, attrs, tell, other)",
    "worker.ask": "between trials: ask (budget lock, journal)",
    "worker.sample_params": "sample params (Optuna sampler)",
    "worker.report": "report to Optuna (intermediate values, pruning)",
    "worker.startup": "worker start-up (imports, study, sampler)",
    "sweep.compose": "compose trial config (Hydra)",
    "sweep.curves": "curves PNG",
    "sweep.startup": "sweep: process start to worker spawn (imports, Hydra, study)",
    "sweep.spawn_workers": "sweep: spawn workers",
    "sweep.preflight": "sweep: preflight (every search-space extreme)",
    "sweep.compose_variant": "sweep: preflight: compose each variant (Hydra)",
    "trainer.preflight": "sweep: preflight: trainer.preflight (data, meta model)",
    "mlflow.open_store": "sweep: MLflow open store",
    "mlflow.open_parent": "sweep: MLflow parent run",
}
# the single run names a few phases for what they are there
SINGLE_RUN_LABELS = {
    **LABELS,
    "trainer.preflight": "preflight (config checks, data, meta model)",
    "trainer.validate_config": "preflight (config checks, data, meta model)",
    "mlflow.writer_start": "MLflow writer process: start",
    "mlflow.writer_send": "MLflow writer: send (pipe)",
    "mlflow.writer_finish": "MLflow writer: wait for the last writes (curves PNG, artifacts, close)",
    "single_run": "CLI other (console, output dir)",
}
CACHED = ("trainer.tokenize", "trainer.model_load")  # phases a warm worker skips after its first trial
# in the sweep process the trainer's phases are parts of the pre-flight, not trials of their own
SWEEP_FOLDS = ("trainer.tokenize", "trainer.model_load", "trainer.lora_setup", "trainer.validate_config",
               "trainer.fingerprint", "sweep.compose")


def read(path: Path) -> list[dict[str, Any]]:
    """The trace's lines, with `exclusive` seconds added to each."""
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        s["seconds"] = s["end"] - s["start"]
        s["exclusive"] = s["seconds"]
        s["parent"] = None
        by_pid[s["pid"]].append(s)
    for group in by_pid.values():
        group.sort(key=lambda s: (s["start"], -s["end"]))
        open_: list[dict[str, Any]] = []
        for s in group:
            while open_ and not s["end"] <= open_[-1]["end"]:
                open_.pop()  # that one ended before this one did: it does not contain this one
            if open_:
                s["parent"] = open_[-1]
                open_[-1]["exclusive"] -= s["seconds"]
            open_.append(s)
    return spans


def _label(phase: str, labels: dict[str, str], cold_suffix: bool) -> str:
    label = labels.get(phase, phase)
    return label + COLD if cold_suffix and phase in CACHED else label


def _add(phases: dict[str, float], span: dict[str, Any], labels: dict[str, str], cold_suffix: bool,
         fold: tuple[str, ...] = ()) -> None:
    """The span's exclusive seconds under its label; a phase in `fold` counts for the nearest
    enclosing phase that is not (the sweep process's pre-flight runs trainer checks)."""
    owner = span
    while owner["phase"] in fold and owner["parent"] is not None:
        owner = owner["parent"]
    key = _label(owner["phase"], labels, cold_suffix)
    phases[key] = phases.get(key, 0.0) + span["exclusive"]


def _inside(span: dict[str, Any], outer: dict[str, Any]) -> bool:
    while span is not None:
        if span is outer:
            return True
        span = span["parent"]
    return False


def sweep_records(path: Path) -> list[dict[str, Any]]:
    """A sweep's trace as records: one per trial ({"kind": "trial", "number", "seconds", "t",
    "phases"}), one per worker start-up ("worker_start") and one for the sweep process
    ("sweep_end"). What a worker does between trials (asking for the next) goes to the next trial."""
    spans = read(path)
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        by_pid[s["pid"]].append(s)
    records: list[dict[str, Any]] = []
    for pid, group in by_pid.items():
        trials = [s for s in group if s["phase"] == "worker.trial"]
        startup = [s for s in group if s["phase"] == "worker.startup"]
        if not trials and not startup:  # the sweep process
            phases: dict[str, float] = {}
            for s in group:
                _add(phases, s, LABELS, cold_suffix=False, fold=SWEEP_FOLDS)
            records.append({"kind": "sweep_end", "pid": pid, "phases": phases,
                            "t": max((s["end"] for s in group), default=0.0)})
            continue
        for s in startup:
            records.append({"kind": "worker_start", "pid": pid, "t": s["end"],
                            "phases": {_label(s["phase"], LABELS, False): s["exclusive"]}})
        trials.sort(key=lambda s: s["start"])
        pending: dict[str, float] = {}
        for s in group:  # before the first trial: counted with it
            if s["parent"] is None and s["phase"] not in ("worker.trial", "worker.startup") and trials \
                    and s["start"] < trials[0]["start"]:
                _add(pending, s, LABELS, cold_suffix=False)
        for trial in trials:
            phases = dict(pending)
            pending = {}
            for s in group:
                if _inside(s, trial):
                    _add(phases, s, LABELS, cold_suffix=True)
            records.append({"kind": "trial", "pid": pid, "number": trial.get("trial"), "seconds": trial["seconds"],
                            "t": trial["end"], "phases": phases})
            later = [t for t in trials if t["start"] > trial["start"]]
            until = min((t["start"] for t in later), default=float("inf"))
            for s in group:  # between this trial and the next: counted with the next
                if s["parent"] is None and s["phase"] not in ("worker.trial", "worker.startup") \
                        and trial["end"] <= s["start"] < until:
                    _add(pending, s, LABELS, cold_suffix=False)
    return records


def single_run_phases(path: Path, pid: int) -> dict[str, float]:
    """Seconds per labelled phase of one process of a single run (`python sweep.py`)."""
    phases: dict[str, float] = {}
    for s in read(path):
        if s["pid"] == pid:
            _add(phases, s, SINGLE_RUN_LABELS, cold_suffix=False)
    return phases
