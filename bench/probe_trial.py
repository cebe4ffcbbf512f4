"""`python sweep.py <overrides>` (one trial, single-run mode) with a stopwatch on each phase.

Why a wrapper: our trainer computes tokenize/model-load/train/eval seconds (TrialResult.resolved)
but neither the single run nor a sweep logs them, and imports, Hydra, preflight, MLflow and the
curve PNG are outside the trainer anyway. This script pre-imports the libraries the CLI imports
anyway (each group timed), wraps the phase functions with exclusive timers (a nested timed call
is not counted twice), then runs sweep.py unchanged via runpy. The timers cost microseconds, so
the wall time of this process is the wall time of the plain CLI run.

    BENCH_PROBE_OUT=phases.json python bench/probe_trial.py data=sst2 ...
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "probe"))
from bench_stopwatch import PHASES, patch, patch_recipe, timed  # noqa: E402


def import_group(phase: str, *modules: str) -> None:
    import importlib

    t0 = time.perf_counter()
    for module in modules:
        importlib.import_module(module)
    PHASES[phase] += time.perf_counter() - t0


def main() -> None:
    sys.path.insert(0, str(REPO))
    # the libraries `python sweep.py` imports anyway, grouped; same set a bare loop needs first
    import_group("imports: torch, transformers, peft, bitsandbytes, datasets",
                 "torch", "transformers", "transformers.models.bert.modeling_bert", "peft", "bitsandbytes",
                 "datasets")
    import_group("imports: hydra, omegaconf", "hydra", "omegaconf", "hydra.core.hydra_config")
    import_group("imports: optuna, rich", "optuna", "rich")
    import_group("imports: mlflow", "mlflow", "mlflow.tracking", "mlflow.entities")
    import_group("imports: matplotlib", "matplotlib", "matplotlib.pyplot")
    import_group("imports: project (sweeps, trainer)", "trainer", "sweeps.single_run", "sweeps.curves",
                 "trainer.recipe", "trainer.prechecks", "sweeps.worker")

    import peft
    import trainer
    import trainer.recipe as recipe
    from sweeps import curves, single_run, tracking, worker

    patch_recipe(recipe)
    patch(peft.PeftModel, "save_pretrained", "adapter save + sha256")
    patch(worker, "_adapter_sha256", "adapter save + sha256")
    trainer.preflight = timed("preflight (config checks, data, meta model)", trainer.preflight)
    trainer.validate_config = timed("preflight (config checks, data, meta model)", trainer.validate_config)
    trainer.run_trial = recipe.run_trial
    trainer.environment_fingerprint = timed("environment fingerprint", trainer.environment_fingerprint)
    patch(tracking.RunBook, "__init__", "MLflow: open store + experiment")
    patch(tracking.RunBook, "open_trial", "MLflow: create run, params, config.yaml")
    patch(tracking.RunBook, "log_metrics", "MLflow: step metrics (logging)")
    patch(tracking.RunBook, "close_trial", "MLflow: final metrics, artifacts, close")
    patch(curves, "plot_curves", "curves PNG")
    patch(single_run, "run_single", "CLI other (console, output dir)")
    single_run.console.print = timed("CLI other (console, output dir)", single_run.console.print)

    t_cli = time.perf_counter()
    sys.argv = [str(REPO / "sweep.py"), *sys.argv[1:]]

    def report() -> None:  # at exit: sweep.py ends the process itself (sweeps.fast_exit)
        from sweeps import fast_exit

        cli_total = time.perf_counter() - t_cli
        PHASES["hydra (plugin scan, compose, job setup)"] = cli_total - sum(
            v for k, v in PHASES.items() if not k.startswith("imports:"))
        error = None if fast_exit.exit_code in (None, 0) else f"exit code {fast_exit.exit_code}"
        out = {"phases": dict(PHASES), "in_process_s": time.perf_counter() - T_START, "error": error}
        target = os.environ.get("BENCH_PROBE_OUT")
        if target:
            Path(target).write_text(json.dumps(out, indent=1))
        print("PROBE_RESULT " + json.dumps(out), flush=True)

    atexit.register(report)  # registered first, so it runs after MLflow's and logging's handlers
    runpy.run_path(str(REPO / "sweep.py"), run_name="__main__")


if __name__ == "__main__":
    main()
