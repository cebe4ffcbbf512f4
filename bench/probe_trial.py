"""`python sweep.py <overrides>` (one trial, single-run mode) with a stopwatch on each phase.

Why a wrapper: our trainer computes tokenize/model-load/train/eval seconds (TrialResult.resolved)
but neither the single run nor a sweep logs them, and imports, Hydra, preflight and the MLflow
writer are outside the trainer anyway. This script imports the libraries the CLI imports, in the
CLI's order (each group timed; torch & co right after the MLflow writer process starts, as the CLI
does), wraps the phase functions with exclusive timers (a nested timed call is not counted twice),
then runs sweep.py unchanged via runpy. The timers cost microseconds, so the wall time of this
process is the wall time of the plain CLI run. The MLflow writer process (store, step metrics,
curve PNG) runs beside this one: only the time this process waits for it is ours to count.

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
    """Import `modules`, timed as `phase` (exclusive: a caller's timer does not count it again)."""
    import importlib

    timed(phase, lambda: [importlib.import_module(m) for m in modules])()


def main() -> None:
    sys.path.insert(0, str(REPO))
    # what `python sweep.py` imports before its single-run code starts, grouped
    import_group("imports: hydra, omegaconf", "hydra", "omegaconf", "hydra.core.hydra_config")
    import_group("imports: optuna, rich", "optuna", "rich")
    import_group("imports: project (sweeps, trainer)", "trainer", "sweeps.single_run", "sweeps.worker")
    before_cli = sum(PHASES.values())

    from sweeps import run_writer, single_run

    start_writer = run_writer.RunWriter.__init__

    def writer_then_imports(self, *args, **kwargs) -> None:
        """The CLI starts the MLflow writer process first, then imports torch & co (in preflight):
        the same order here, with the imports timed as one group and our phases patched after."""
        timed("MLflow writer process: start", start_writer)(self, *args, **kwargs)
        import_group("imports: torch, transformers, peft, bitsandbytes, datasets",
                     "torch", "transformers", "transformers.models.bert.modeling_bert", "peft", "bitsandbytes",
                     "datasets")
        import_group("imports: project (sweeps, trainer)", "trainer.recipe", "trainer.prechecks")
        _patch_trial_phases()

    run_writer.RunWriter.__init__ = writer_then_imports
    patch(run_writer.RunWriter, "send", "MLflow writer: send (pipe)")
    patch(run_writer.RunWriter, "finish", "MLflow writer: wait for the last writes (curves PNG, artifacts, close)")
    patch(single_run, "run_single", "CLI other (console, output dir)")
    single_run.console.print = timed("CLI other (console, output dir)", single_run.console.print)

    t_cli = time.perf_counter()
    sys.argv = [str(REPO / "sweep.py"), *sys.argv[1:]]

    def report() -> None:  # at exit: sweep.py ends the process itself (sweeps.fast_exit)
        from sweeps import fast_exit

        cli_total = time.perf_counter() - t_cli
        PHASES["hydra (plugin scan, compose, job setup)"] = cli_total - (sum(PHASES.values()) - before_cli)
        error = None if fast_exit.exit_code in (None, 0) else f"exit code {fast_exit.exit_code}"
        out = {"phases": dict(PHASES), "in_process_s": time.perf_counter() - T_START, "error": error}
        target = os.environ.get("BENCH_PROBE_OUT")
        if target:
            Path(target).write_text(json.dumps(out, indent=1))
        print("PROBE_RESULT " + json.dumps(out), flush=True)

    atexit.register(report)  # registered first, so it runs after MLflow's and logging's handlers
    runpy.run_path(str(REPO / "sweep.py"), run_name="__main__")


def _patch_trial_phases() -> None:
    import peft

    import trainer
    import trainer.recipe as recipe
    from sweeps import worker

    patch_recipe(recipe)
    patch(peft.PeftModel, "save_pretrained", "adapter save + sha256")
    patch(worker, "adapter_sha256", "adapter save + sha256")
    trainer.preflight = timed("preflight (config checks, data, meta model)", trainer.preflight)
    trainer.validate_config = timed("preflight (config checks, data, meta model)", trainer.validate_config)
    trainer.run_trial = recipe.run_trial
    trainer.environment_fingerprint = timed("environment fingerprint", trainer.environment_fingerprint)


if __name__ == "__main__":
    main()
