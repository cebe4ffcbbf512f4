"""Per-phase stopwatch inside a real `python sweep.py -m` (sweep process and its spawned workers).

Active only when BENCH_SWEEP_PROBE names a folder and this folder is on PYTHONPATH (the benchmark
sets both; spawned workers inherit them). It wraps our phase functions with exclusive timers as
their modules are imported (nothing of ours is edited) and appends one JSON line per trial to
<folder>/<pid>.jsonl, plus one line for the sweep process's start-up phases. Timers cost
microseconds per call; the sweep's wall time is unchanged within noise.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("BENCH_SWEEP_PROBE")

if _OUT:
    import atexit
    import functools
    import importlib.abc
    import json
    import sys
    import time
    from pathlib import Path

    from bench_stopwatch import PHASES as _PHASES, _STACK
    from bench_stopwatch import patch as _patch, patch_recipe as _patch_recipe, timed as _timed

    _T0 = time.perf_counter()
    _STATE = {"first": None, "role": "sweep"}

    def _process_age():
        """Seconds since this process started (a forked worker did not run this module's start)."""
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")

    def _dump(record):
        path = Path(_OUT) / f"{os.getpid()}.jsonl"
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _flush(kind, **extra):
        record = {"kind": kind, "role": _STATE["role"], "pid": os.getpid(), "t": time.time(),
                  "phases": dict(_PHASES), **extra}
        _PHASES.clear()
        _dump(record)

    # -- what to time, per module ----------------------------------------------------------------
    def _worker(mod):
        init = mod.Worker.__init__

        @functools.wraps(init)
        def worker_init(self, *args, **kwargs):
            _STATE["role"] = "worker"
            _PHASES["worker start-up (imports, study, sampler)"] += _process_age()  # spawn/fork + imports
            t0 = time.perf_counter()
            init(self, *args, **kwargs)
            _PHASES["worker start-up (imports, study, sampler)"] += time.perf_counter() - t0
            _flush("worker_start")

        mod.Worker.__init__ = worker_init
        run_one = mod.Worker.run_one

        @functools.wraps(run_one)
        def timed_run_one(self, trial):
            t0 = time.perf_counter()
            _STACK.append(0.0)
            try:
                return run_one(self, trial)
            finally:
                total = time.perf_counter() - t0
                _PHASES["worker bookkeeping (events, attrs, tell, other)"] += total - _STACK.pop()
                _flush("trial", number=trial.number, seconds=total)

        mod.Worker.run_one = timed_run_one
        _patch(mod.Worker, "_params", "sample params (Optuna sampler)")
        _patch(mod, "adapter_sha256", "adapter save + sha256")
        _patch(mod.TrialReporter, "report", "report to Optuna (intermediate values, pruning)")

    def _study(mod):
        _patch(mod.TrialBudget, "next_trial", "between trials: ask (budget lock, journal)")

    def _recipe(mod):
        _patch_recipe(mod, " (cached after the first trial)")

    def _compose(mod):
        _patch(mod, "compose_job", "compose trial config (Hydra)")

    def _curves(mod):
        _patch(mod, "plot_curves", "curves PNG")

    def _peft(mod):
        _patch(mod.PeftModel, "save_pretrained", "adapter save + sha256")

    def _preflight(mod):
        _patch(mod, "validate_sweep", "sweep: preflight (every search-space extreme)")

    def _prechecks(mod):
        _patch(mod, "preflight", "sweep: preflight: trainer.preflight (data, meta model)")

    def _sweeper(mod):
        variant = mod.Sweep.compose_variant

        @functools.wraps(variant)
        def timed_variant(self, *args, **kwargs):
            return _timed("sweep: preflight: compose each variant (Hydra)", variant(self, *args, **kwargs))

        mod.Sweep.compose_variant = timed_variant

    def _tracking(mod):
        _patch(mod.RunBook, "__init__", "sweep: MLflow open store")
        _patch(mod.RunBook, "open_parent", "sweep: MLflow parent run")

    def _supervisor(mod):
        start = mod.Supervisor.start

        @functools.wraps(start)
        def timed_start(self, *args, **kwargs):
            _PHASES["sweep: process start to worker spawn (imports, Hydra, study)"] += time.perf_counter() - _T0 - sum(
                _PHASES.values())
            t0 = time.perf_counter()
            out = start(self, *args, **kwargs)
            _PHASES["sweep: spawn workers"] += time.perf_counter() - t0
            return out

        mod.Supervisor.start = timed_start

    _TARGETS = {"sweeps.worker": _worker, "sweeps.study": _study, "trainer.recipe": _recipe,
                "sweeps.compose": _compose, "sweeps.curves": _curves, "peft.peft_model": _peft,
                "sweeps.preflight": _preflight,
                "trainer.prechecks": _prechecks, "sweeps.sweeper": _sweeper, "sweeps.tracking": _tracking, "sweeps.supervisor": _supervisor}

    class _Finder(importlib.abc.MetaPathFinder):
        """Runs the patcher right after one of the target modules has executed."""

        def find_spec(self, name, path, target=None):
            if name not in _TARGETS:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            original = loader.exec_module

            def exec_module(module, _original=original, _name=name):
                _original(module)
                _TARGETS[_name](module)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())

    @atexit.register
    def _at_exit():
        if _STATE["role"] == "sweep":
            _flush("sweep_end", in_process_s=time.perf_counter() - _T0)
