"""`python sweep.py <overrides>` (one trial, single-run mode) with the seconds of each phase.

The phases come from the runtime's own trace (`LORA_SWEEP_TRACE`, trainer/trace.py), which this
script turns on for the run. What the trace cannot see is the imports: this script imports the
libraries the CLI imports, in groups, each timed, then runs sweep.py unchanged via runpy, so the
imports the CLI would do are already done. What is left of the CLI's time after the traced
phases is Hydra's (plugin scan, compose, job setup). The MLflow writer process (store, step
metrics, curve PNG) runs beside this one: only the time this process waits for it is ours.

    BENCH_PROBE_OUT=phases.json python bench/probe_trial.py data=sst2 ...
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import atexit  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trace_phases import TRACE_ENV, single_run_phases  # noqa: E402

IMPORTS = [  # what `python sweep.py` imports before and during its single-run code, in its order, grouped
    ("imports: hydra, omegaconf", ("hydra", "omegaconf", "hydra.core.hydra_config")),
    ("imports: optuna, rich", ("optuna", "rich")),
    ("imports: project (sweeps, trainer)", ("trainer", "sweeps.single_run", "sweeps.runtime.worker")),
    ("imports: torch, transformers, peft, bitsandbytes, datasets",
     ("torch", "transformers", "transformers.models.bert.modeling_bert", "peft", "bitsandbytes", "datasets")),
    ("imports: project (sweeps, trainer)", ("trainer.recipe", "trainer.prechecks")),
]


def main() -> None:
    sys.path.insert(0, str(REPO))
    trace = Path(os.environ.get(TRACE_ENV) or tempfile.mkstemp(suffix=".jsonl", prefix="trace-")[1])
    os.environ[TRACE_ENV] = str(trace)
    phases: dict[str, float] = {}
    for phase, modules in IMPORTS:
        t0 = time.perf_counter()
        for module in modules:
            importlib.import_module(module)
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t0

    t_cli = time.perf_counter()
    sys.argv = [str(REPO / "sweep.py"), *sys.argv[1:]]

    def report() -> None:  # at exit: sweep.py ends the process itself (sweeps.runtime.fast_exit)
        from sweeps.runtime import fast_exit

        cli_total = time.perf_counter() - t_cli
        traced = single_run_phases(trace, os.getpid())
        phases.update(traced)
        phases["hydra (plugin scan, compose, job setup)"] = cli_total - sum(traced.values())
        error = None if fast_exit.exit_code in (None, 0) else f"exit code {fast_exit.exit_code}"
        out = {"phases": phases, "in_process_s": time.perf_counter() - T_START, "error": error}
        target = os.environ.get("BENCH_PROBE_OUT")
        if target:
            Path(target).write_text(json.dumps(out, indent=1))
        print("PROBE_RESULT " + json.dumps(out), flush=True)

    atexit.register(report)  # registered first, so it runs after MLflow's and logging's handlers
    runpy.run_path(str(REPO / "sweep.py"), run_name="__main__")


if __name__ == "__main__":
    main()
