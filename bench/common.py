"""Shared plumbing of the benchmarks: mode sizes, scratch work dirs, running the real CLI as a
subprocess (timed from outside), reading its Optuna journal and MLflow store back, and the
machine/version facts every result depends on.

Everything of ours is run through `python sweep.py` exactly as a user runs it: the benchmark
measures the product, not a re-implementation of it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from trace_phases import TRACE_ENV, sweep_records

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SWEEP = REPO / "sweep.py"
WORK_ROOT = BENCH / "work"          # gitignored scratch space
SST2_DIR = REPO.parent / "shared" / "data" / "sst2"
EXPERIMENT = "lora-sweep"


class BenchError(RuntimeError):
    """A benchmark step failed (the message carries the tail of its log)."""


# -- sizes per mode ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Every knob a mode sets. `std_*` is the standard sweep shared by benchmarks 2, 3, 4 and 5:
    one run of ours serves as the warm throughput arm, the 1x2 scaling arm, the no-pruning arm and
    the TPE seed-0 quality run, so each answer costs one sweep less."""

    name: str
    # 1. overhead: one trial of "about a minute"
    ov_train: int
    ov_eval: int
    ov_epochs: int
    ov_lr: float
    ov_repeats: int
    # the standard short-trial sweep
    std_trials: int
    std_train: int
    std_eval: int
    std_steps: int
    std_eval_every: int
    tpe_startup: int                 # TPE's n_startup_trials (Optuna's default is 10)
    # 2. cold baseline: how many of the std trials get a fresh process each (all = same 12 trials)
    cold_trials: int
    # 4. quality
    q_trials: int                    # N (<= std_trials: seed 0 of TPE is the standard sweep)
    q_seeds: tuple[int, ...]
    q_arms: str = "all"              # the arms to run, comma-separated keys of bench/quality.py ARM_KEYS
    batch_size: int = 16
    max_len: int = 64
    # 3. pruning: its own trial length and sampler when set (None: the standard sweep's, whose
    # unpruned TPE runs are then shared); Hyperband's first rung is the first eval checkpoint at or
    # after `prune_first_rung` of the steps, and it keeps 1 / `prune_rf` of the trials at each rung
    prune_sampler: str = "tpe"
    prune_trials: int | None = None
    prune_steps: int | None = None
    prune_eval_every: int | None = None
    prune_first_rung: float = 0.4
    prune_rf: int = 2


MODES: dict[str, Sizes] = {
    "smoke": Sizes("smoke", ov_train=32, ov_eval=16, ov_epochs=1, ov_lr=3e-3, ov_repeats=1,
                   std_trials=3, std_train=32, std_eval=16, std_steps=2, std_eval_every=1, tpe_startup=2,
                   cold_trials=1, q_trials=2, q_seeds=(0,), batch_size=8, max_len=32),
    "quick": Sizes("quick", ov_train=640, ov_eval=200, ov_epochs=2, ov_lr=3e-3, ov_repeats=1,
                   std_trials=12, std_train=400, std_eval=32, std_steps=8, std_eval_every=4, tpe_startup=4,
                   cold_trials=1, q_trials=4, q_seeds=(0,)),
    "full": Sizes("full", ov_train=1000, ov_eval=872, ov_epochs=2, ov_lr=2e-3, ov_repeats=3,
                  std_trials=12, std_train=2000, std_eval=300, std_steps=30, std_eval_every=6, tpe_startup=6,
                  cold_trials=12, q_trials=12, q_seeds=(0, 1, 2),
                  prune_sampler="random", prune_trials=12, prune_steps=60, prune_eval_every=12, prune_first_rung=0.2,
                  prune_rf=3),
}


# -- data ---------------------------------------------------------------------------------------------
USE_DEMO_DATA = False  # run.py --demo-data: the built-in demo set even where SST-2 is present


def sst2_available() -> bool:
    """Whether the benchmarks read SST-2 (present, and not --demo-data)."""
    return not USE_DEMO_DATA and (SST2_DIR / "train.jsonl").is_file() and (SST2_DIR / "validation.jsonl").is_file()


def data_name() -> str:
    if USE_DEMO_DATA:
        return "built-in demo data (--demo-data)"
    return f"SST-2 ({SST2_DIR})" if sst2_available() else "built-in demo data (../shared/data/sst2 missing)"


def data_overrides(n_train: int, n_eval: int) -> list[str]:
    """Hydra overrides for the benchmark data: SST-2 read in place, else the built-in demo set."""
    if sst2_available():
        return ["data=sst2", f"data.path={SST2_DIR}", f"data.max_train_samples={n_train}",
                f"data.max_eval_samples={n_eval}"]
    return ["data=demo", f"data.max_train_samples={min(n_train, 1200)}", f"data.max_eval_samples={min(n_eval, 300)}"]


def train_overrides(s: Sizes, steps: int, eval_every: int, **extra: Any) -> list[str]:
    out = [f"train.max_steps={steps}", f"train.eval_every_steps={eval_every}", f"train.batch_size={s.batch_size}",
           f"train.max_seq_length={s.max_len}"]
    return out + [f"{k}={v}" for k, v in extra.items()]


# -- processes ----------------------------------------------------------------------------------------
def bench_env(threads: int | None = None, omp_passive: bool = True) -> dict[str, str]:
    """The environment of every measured process (ours and the baselines alike).

    OMP_WAIT_POLICY=PASSIVE: on a CPU shared with other jobs, OpenMP's default spin-waiting makes a
    2-thread torch step 3-10x slower and wildly variable; passive waiting keeps the numbers
    comparable. It applies to every arm equally (`--omp-active` turns it off).
    """
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               HYDRA_FULL_ERROR="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", COLUMNS="160")
    env.pop("SST2_PATH", None)
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


OMP_PASSIVE = True  # set by run.py from --omp-active


class RssSampler:
    """Peak resident memory of a process tree, polled (psutil) while it runs: per process and
    classified as `sweep` (the root), `worker` (spawned, or forked by the CPU workers' fork
    server) or `other` (the fork server, resource tracker, ...)."""

    def __init__(self, pid: int, interval: float = 0.25):
        import threading

        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self.cpu: dict[int, float] = {}  # last seen user+system CPU seconds per process
        self.cpu_series: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds of the tree so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    times = p.cpu_times()
                    self.cpu[p.pid] = times.user + times.system
                    if p.pid not in self.peaks:
                        cmd = " ".join(p.cmdline())
                        forked = "multiprocessing.forkserver" in cmd and p.ppid() != self.pid
                        role = ("sweep" if p.pid == self.pid else "worker" if ("spawn_main" in cmd or forked) and
                                "resource_tracker" not in cmd else "other")
                        self.peaks[p.pid] = (role, rss)
                    elif rss > self.peaks[p.pid][1]:
                        self.peaks[p.pid] = (self.peaks[p.pid][0], rss)
                except psutil.Error:
                    continue
            self.cpu_series.append((time.time(), sum(self.cpu.values())))
            self._stop.wait(self.interval)

    def stop(self) -> tuple[dict[str, list[float]], dict[str, float]]:
        """(role -> peak RSS MiB of each process, role -> CPU seconds summed over its processes)."""
        self._stop.set()
        self._thread.join(timeout=2)
        out: dict[str, list[float]] = {}
        cpu: dict[str, float] = {}
        for pid, (role, peak) in self.peaks.items():
            out.setdefault(role, []).append(round(peak, 1))
            cpu[role] = cpu.get(role, 0.0) + self.cpu.get(pid, 0.0)
        return out, cpu


@dataclass
class Proc:
    """A finished subprocess: how long it took from the outside, and what it printed."""

    cmd: list[str]
    wall_s: float
    rc: int
    out: str
    started: float  # time.time() at launch
    log: Path | None = None
    rss_mb: dict[str, list[float]] = field(default_factory=dict)  # role -> peak RSS (MiB) of each process
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds (polled; children last seen)
    cpu_series: list[tuple[float, float]] = field(default_factory=list)  # (epoch s, CPU s of the tree so far)

    def cpu_at(self, when: float) -> float:
        """CPU seconds the process tree had used by epoch time `when` (the last poll before it)."""
        return max((cpu for t, cpu in self.cpu_series if t <= when), default=0.0)

    def json_line(self, prefix: str) -> dict[str, Any]:
        for line in reversed(self.out.splitlines()):
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
        raise BenchError(f"no {prefix!r} line in the output of {' '.join(self.cmd)}; log {self.log}")


def run(cmd: list[str], cwd: Path, log_name: str, timeout: float = 3600, env: dict[str, str] | None = None,
        check: bool = True, sample_rss: bool = True) -> Proc:
    """Run a command to completion, timed from the outside (interpreter start-up and exit included)."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / f"{log_name}.log"
    started = time.time()
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or bench_env(omp_passive=OMP_PASSIVE), stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
        sampler = RssSampler(proc.pid) if sample_rss else None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"timed out after {timeout:.0f}s: {' '.join(cmd)} (log {log})") from None
        finally:
            rss, cpu = sampler.stop() if sampler else ({}, {})
            series = sampler.cpu_series if sampler else []
        wall = time.perf_counter() - t0
    out = log.read_text(errors="replace")
    if check and rc != 0:
        raise BenchError(f"exit {rc}: {' '.join(cmd)}\n--- log {log} (tail) ---\n{out[-3000:]}")
    return Proc(cmd, wall, rc, out, started, log, rss, cpu, series)


def sweep_cmd(*overrides: str, multirun: bool = True) -> list[str]:
    return [sys.executable, str(SWEEP), *(["-m"] if multirun else []), *overrides]


# -- work dirs and stores -------------------------------------------------------------------------------
class Workspace:
    """bench/work/<stamp>/<name>/ scratch dirs, each with an already-initialised MLflow store.

    A sweep's first run creates `mlflow.db` (schema migrations, seconds); that happens once per
    store, not per trial, so every arm starts from an initialised store and the one-off cost is
    measured on its own (`mlflow_init_s`).
    """

    def __init__(self, root: Path | None = None):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.root = root or WORK_ROOT / stamp
        self.root.mkdir(parents=True, exist_ok=True)
        self._template: Path | None = None
        self.mlflow_init_s: float | None = None

    def template_db(self) -> Path:
        if self._template is None:
            tdir = self.root / "_mlflow_template"
            tdir.mkdir(exist_ok=True)
            code = ("from mlflow.tracking import MlflowClient; import sys; "
                    "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()")
            proc = run([sys.executable, "-c", code, f"sqlite:///{tdir / 'mlflow.db'}"], tdir, "init")
            self.mlflow_init_s = proc.wall_s
            self._template = tdir / "mlflow.db"
        return self._template

    def new(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        shutil.copy(self.template_db(), path / "mlflow.db")
        return path


@dataclass
class TrialRow:
    """One Optuna trial as the benchmarks need it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    start: float | None           # epoch seconds
    complete: float | None
    attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return (self.complete or 0.0) - (self.start or 0.0)


def study_rows(workdir: Path, study_name: str) -> list[TrialRow]:
    """Trials of `study_name` in the work dir's Optuna journal, by trial number."""
    import optuna

    sys.path.insert(0, str(REPO))
    from sweeps.search.storage import open_storage

    storage = open_storage(None, cwd=workdir)
    study = optuna.load_study(study_name=study_name, storage=storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(TrialRow(t.number, t.state.name, t.value if t.state.name == "COMPLETE" else None, dict(t.params),
                             t.datetime_start.timestamp() if t.datetime_start else None,
                             t.datetime_complete.timestamp() if t.datetime_complete else None,
                             dict(t.user_attrs), dict(t.intermediate_values)))
    return sorted(rows, key=lambda r: r.number)


def mlflow_runs(workdir: Path) -> list[Any]:
    """Every MLflow run in the work dir's store (children and parents)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=5000)


def override_line(key: str, value: Any) -> str:
    """The exact override our sweeper composes for a sampled value (reused, not re-implemented)."""
    sys.path.insert(0, str(REPO))
    from sweeps.search.space import override_line as ours

    return ours(key, value)


# -- facts --------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram_gib = None
    try:
        import psutil

        ram_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "platform": platform.platform(),
            "python": platform.python_version(), "gpu": "none (CPU run)"}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "optuna", "mlflow", "hydra-core", "datasets",
                 "accelerate"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "-"
    return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S} load {load()}] {msg}", flush=True)


def asdict_sizes(s: Sizes) -> dict[str, Any]:
    return asdict(s)


# -- benchmark context and sweeps -------------------------------------------------------------------------
@dataclass
class Section:
    """One benchmark's part of BENCHMARKS.md and results.json."""

    title: str
    body: str                     # markdown: tables and readings
    results: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Context:
    sizes: Sizes
    ws: Workspace
    shared: dict[str, Any] = field(default_factory=dict)   # runs reused across benchmarks


@dataclass
class SweepRun:
    """One `python sweep.py -m` run: its outside wall time, its trials, its per-phase records (bench/trace_phases.py)."""

    name: str
    workdir: Path
    proc: Proc
    rows: list[TrialRow]
    probe: list[dict[str, Any]]

    @property
    def finished(self) -> list[TrialRow]:
        return [r for r in self.rows if r.state in ("COMPLETE", "PRUNED")]

    @property
    def plan(self) -> str:
        """'workers x threads' as the sweep printed it ("search: 12 trials, 2 worker(s), 1 CPU thread(s) each")."""
        import re

        m = re.search(r"(\d+) worker\(s\), (\d+) CPU thread", self.proc.out)
        return f"{m.group(1)} x {m.group(2)}" if m else "?"

    @property
    def complete(self) -> list[TrialRow]:
        return [r for r in self.rows if r.state == "COMPLETE"]

    def trials_per_hour(self) -> float:
        return len(self.finished) / self.proc.wall_s * 3600

    def steady_trials_per_hour(self) -> float:
        """Trials per hour between the first trial's start and the last one's end (start-up excluded)."""
        rows = [r for r in self.finished if r.start and r.complete]
        span = max(r.complete for r in rows) - min(r.start for r in rows)
        return len(rows) / span * 3600 if span > 0 else 0.0

    def best(self, first_n: int | None = None) -> float | None:
        values = [r.value for r in self.complete if first_n is None or r.number < first_n]
        return max(values) if values else None

    def trial_records(self) -> list[dict[str, Any]]:
        return sorted((r for r in self.probe if r["kind"] == "trial"), key=lambda r: r["t"])


def std_overrides(s: Sizes, n_trials: int | None = None, sampler: str = "tpe", seed: int = 0, pruner: str = "none",
                  n_jobs: int | None = None) -> list[str]:
    """The standard short-trial sweep (see Sizes): the search space the committed tables were measured
    on (default_v1: the classification default before the prior-centred space; bench/hf_search.py
    searches the same), one knob changed at a time."""
    out = data_overrides(s.std_train, s.std_eval) + train_overrides(s, s.std_steps, s.std_eval_every)
    out += ["search_space=default_v1", f"hydra.sweeper.n_trials={n_trials or s.std_trials}",
            f"hydra.sweeper.sampler={sampler}", f"hydra.sweeper.sampler_seed={seed}",
            f"hydra.sweeper.pruner={pruner}"]
    # the protocol the committed tables were measured with: sampled configs only (no base trial, no
    # informed start-up), each scored at its last eval, pruners acting from their first rung
    out += ["hydra.sweeper.include_base=false", "hydra.sweeper.objective_at=last", "hydra.sweeper.prune_after=0",
            "hydra.sweeper.prune_min_trials=0", "hydra.sweeper.startup=random"]
    if n_jobs is not None:  # None: our default worker plan (one single-threaded worker per core)
        out.append(f"hydra.sweeper.n_jobs={n_jobs}")
    if sampler == "tpe":
        out.append(f"hydra.sweeper.sampler_kwargs={{n_startup_trials:{s.tpe_startup}}}")
    return out


def run_sweep(ctx: Context, name: str, overrides: list[str], enqueue: list[dict[str, Any]] | None = None,
              probe: bool = True, timeout: float = 7200) -> SweepRun:
    """`python sweep.py -m <overrides>` in a fresh work dir; `enqueue` pre-fills the study with
    fixed params (Optuna's enqueue_trial) so the sweep runs exactly those trials first."""
    workdir = ctx.ws.new(name)
    if enqueue:
        import optuna

        sys.path.insert(0, str(REPO))
        from sweeps.search.storage import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=open_storage(None, cwd=workdir), study_name=name, direction="maximize")
        for params in enqueue:
            study.enqueue_trial(params)
    env = bench_env(omp_passive=OMP_PASSIVE)
    if probe:  # the runtime's own per-phase trace (trainer/trace.py)
        env[TRACE_ENV] = str(workdir / "trace.jsonl")
    log(f"sweep {name}: {' '.join(o for o in overrides if not o.startswith('data.path'))}")
    proc = run(sweep_cmd(*overrides, f"hydra.sweeper.study_name={name}"), workdir, "sweep", timeout=timeout, env=env)
    records = sweep_records(workdir / "trace.jsonl") if probe else []
    rows = study_rows(workdir, name)
    log(f"sweep {name}: {proc.wall_s:.0f}s, {len(rows)} trials, best {fmt(max((r.value for r in rows if r.value is not None), default=None), 4)}")
    return SweepRun(name, workdir, proc, rows, records)


def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def run_sweeps_parallel(ctx: Context, specs: list[tuple[str, list[str]]], max_parallel: int = 2) -> dict[str, SweepRun]:
    """Several sweeps at once, for benchmarks that read accuracy only (never timing): their
    single-threaded start-ups (imports, preflight) overlap instead of queueing."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        futures = {name: pool.submit(run_sweep, ctx, name, overrides) for name, overrides in specs}
        return {name: f.result() for name, f in futures.items()}
