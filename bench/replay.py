"""Search strategies replayed against learning-curve tables: compute to a near-best config, per arm, as a distribution.

    python bench/replay.py [--tables demo sst2] [--sweeps 200] [--trials 40] [--out bench/results/replay.md]
    python bench/replay.py --smoke           # a tiny table recorded on the spot, a few sweeps per arm (the test suite)

Each arm is a search strategy built from the product's own parts: its search space parsed by
`sweeps.search.space` from the YAML a user would name, its sampler from `make_sampler`, its pruner
from `make_pruner` (the guard included), the base trial enqueued as the sweeper does. One replayed
sweep drives an in-memory Optuna study as a one-worker sweep does: ask, suggest each key of the
space, report each eval of the trial's curve, stop when the pruner says so, tell. A trial's curve
comes from the table (bench/curves.py): **the nearest tabulated config** in the space's
normalised coordinates (rank and alpha in log2, dropout linear, learning rate in log over the
table's range, a mismatched target preset / scheduler counting one unit, a mismatched seed a
tenth), so the replay never invents a value a real trial did not produce. The configs a sweep asks
for by construction (the base config, informed start-up's) are rows of their own, found exactly. Keys a table does not
vary (e.g. warmup_ratio in the LLM space) take no part in the lookup: the replay cannot see them.

Compute is trial-seconds as measured in the table (the CPU-seconds of the single-threaded trial
up to the eval where it stopped: its compute, whatever else ran on the machine) plus the per-trial cost of the arm's process model: our warm worker
pays the warm-cache lookup the table measured on warm rows; Hugging Face's `hyperparameter_search`
re-loads (and re-quantises) the base model in `model_init` every trial, so its trials pay the
table's cold model load. Per arm, over `--sweeps` sweeps each with its own sampler seed: the
compute until the sweep holds a config within 1 and within 0.5 points of the table's best (median
and 90% band across sweeps, with a bootstrap interval on the median; a sweep that never gets there
within `--trials` counts as not reached), the test accuracy of the config the sweep selects after
10 and after `--trials` trials, and how often a pruned trial would have beaten the config the
sweep kept (false kill).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from curves import lookup_params, spaces_of  # bench/ is the script's own folder

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
TABLES = BENCH / "tables"
NEAR_TARGETS = (0.01, 0.005)  # within 1 and 0.5 points of the table's best


# -- tables -------------------------------------------------------------------------------------------
@dataclass
class Table:
    """One learning-curve table: rows (config, curve, test score) and their lookup coordinates."""

    name: str
    metric: str
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    coords: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [r for r in self.rows if r.get("evals") and not r.get("error")]
        self.coords = np.array([self.coordinates(r["params"]) for r in self.rows])
        self.maximize = not self.metric.endswith("loss")

    @classmethod
    def load(cls, name: str) -> "Table":
        from curves import PROTOCOLS, read_table

        header, rows = read_table(name, TABLES)
        if not rows:  # not merged yet: the shards as they are
            rows = [json.loads(line) for shard in sorted(TABLES.glob(f"{name}.shard*.jsonl"))
                    for line in shard.read_text().splitlines() if line.strip()]

        return cls(name, header.get("metric") or PROTOCOLS[name]["metric"], header, rows)

    def coordinates(self, params: dict[str, Any]) -> list[float]:
        """A config as lookup coordinates, each spanning about one unit over the table space."""
        from curves import PROTOCOLS, RANKS

        lo, hi = PROTOCOLS[self.name]["lr"]
        r = float(params.get("lora.r", 8))
        alpha = params.get("lora.lora_alpha")
        if alpha is None:
            alpha = r * float(params.get("lora.alpha_ratio") or 2)
        lr = float(params.get("train.learning_rate", math.sqrt(lo * hi)))
        return [math.log2(r) / math.log2(RANKS[-1] / RANKS[0]), math.log2(float(alpha)) / 4.0,
                float(params.get("lora.lora_dropout", 0.05)) / 0.2, math.log(lr) / math.log(hi / lo)]

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        d = np.abs(self.coords - np.array(self.coordinates(params))).sum(axis=1)
        for key, weight in (("lora.target_modules", 1.0), ("train.lr_scheduler_type", 1.0), ("seed", 0.1)):
            if key in params:
                d = d + weight * np.array([r["params"].get(key) != params[key] for r in self.rows])
        return self.rows[int(np.argmin(d))]

    def objective(self, row: dict[str, Any], at: str, upto: int | None = None) -> float:
        values = [e[self.metric] for e in row["evals"][:upto]]
        if at == "last":
            return values[-1]
        return max(values) if self.maximize else min(values)

    def best(self, at: str) -> float:
        values = [self.objective(r, at) for r in self.rows]
        return max(values) if self.maximize else min(values)

    def quantile(self, at: str, q: float) -> float:
        """The value a config must reach to be in the table's top (1 - q) share (in the metric's direction)."""
        values = np.array([self.objective(r, at) for r in self.rows])
        return float(np.quantile(values, q if self.maximize else 1 - q))

    def cost(self, row: dict[str, Any], upto: int) -> float:
        """CPU-seconds of training and evals up to eval `upto` (1-based) in the single-threaded
        recording process, without this row's own model load / tokenize (the arm's process model
        adds its own). CPU-seconds, not wall: the tables were recorded beside other jobs, and a
        single-threaded trial's CPU time is its compute whatever else ran."""
        overhead = sum((row.get("overhead_s") or {}).values())
        return max(0.0, row["evals"][upto - 1]["cpu_s"] - overhead)

    def overheads(self) -> dict[str, float]:
        """Per-trial costs measured in the table: warm-cache lookups and the cold model load."""
        warm = [sum(r["overhead_s"].values()) for r in self.rows if r.get("warm_model") and r.get("overhead_s")]
        cold = [sum(r["overhead_s"].values()) for r in self.rows if r.get("warm_model") is False and r.get("overhead_s")]
        return {"warm_s": statistics.median(warm) if warm else 0.0, "cold_s": statistics.median(cold) if cold else 0.0}


def trial_overheads(table: Table) -> dict[str, float]:
    """Seconds each trial costs beside its steps and evals, per process model. Ours: the warm-cache
    lookups the table measured plus the runtime's own per-trial work (benchmark 1's product-minus-
    bare-loop wall on the same trial, bench/results.json). HF: its `model_init` per trial (the
    throughput benchmark's measured re-load and re-quantisation), else the table's cold load."""
    measured = json.loads((BENCH / "results.json").read_text()) if (BENCH / "results.json").exists() else {}
    runtime = (statistics.median(measured["overhead_wall_ours_s"]) - statistics.median(measured["overhead_wall_bare_s"])
               if measured.get("overhead_wall_ours_s") and measured.get("overhead_wall_bare_s") else 0.0)
    hf_init = measured.get("hf_model_init_s")
    own = table.overheads()
    return {"ours": own["warm_s"] + max(0.0, runtime), "hf": statistics.median(hf_init) if hf_init else own["cold_s"]}


# -- arms ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    label: str
    space: str                        # conf/search_space/<space>.yaml
    sampler: str = "tpe"
    sampler_kwargs: tuple = ()
    pruner: str = "median"
    pruner_kwargs: tuple = ()
    prune_after: float = 0.5
    prune_min_trials: int = 4
    false_kill: float = 0.05          # the conformal pruner's target rate (hydra.sweeper.prune_false_kill)
    include_base: bool = True
    objective_at: str = "best"
    startup: str = "random"
    hf: bool = False                  # Hugging Face's hyperparameter_search: Optuna's own defaults, cold trials
    drop: tuple = ()                  # keys left out of the space (the seed, when the race spends that budget)


def default_arms(table: str) -> list[Arm]:
    """HF's search, random search, the old product default, and each lever alone and together."""
    old, new = spaces_of(table)
    arms = [Arm("HF hyperparameter_search (TPE, median pruner, Optuna defaults)", old, pruner="median_optuna",
                include_base=False, objective_at="last", hf=True),
            Arm("random, no pruner", old, sampler="random", pruner="none", include_base=False),
            Arm("old product default (TPE, median from 50%, base first)", old),
            Arm("+ prior-centred space", new)]
    for rate in (0.05, 0.2):
        arms.append(Arm(f"+ conformal pruner (prune_false_kill {rate}, from 30%)", old, pruner="conformal",
                        false_kill=rate, prune_after=0.3))
    arms += [Arm("+ informed start-up", old, startup="informed"),
             Arm("+ seed out of the space (race on)", old, drop=("seed",)),
             Arm("prior space + informed start-up", new, startup="informed"),
             Arm("prior space + informed + conformal 0.2", new, startup="informed", pruner="conformal",
                 false_kill=0.2, prune_after=0.3),
             Arm("prior space + informed + conformal 0.2, seed out", new, startup="informed", pruner="conformal",
                 false_kill=0.2, prune_after=0.3, drop=("seed",))]
    return arms


@dataclass
class Setup:
    """What a sweep of an arm on a table starts from, as the sweeper's pre-flight builds it: the
    space (lr_prior resolved for the protocol's model), the base trial's params (None when the base
    lies outside the space: the sweeper skips it then), and the job's values of the table's keys
    (what a trial that does not search a key trains with)."""

    space: Any
    base: dict[str, Any] | None
    defaults: dict[str, Any]


def setup(arm: Arm, table: Table) -> Setup:
    from curves import space_setup

    space, base, defaults = space_setup(arm.space, table.name)
    if arm.drop:
        space = space.without(set(arm.drop))
        base = None if base is None else {k: v for k, v in base.items() if k not in arm.drop}
    return Setup(space, base if arm.include_base else None, defaults)


def make_study(arm: Arm, table: Table, st: Setup, seed: int, total_steps: int, n_trials: int):
    import optuna

    from sweeps.search.pruning import PruneGuard
    from sweeps.search.samplers import make_pruner, make_sampler

    if arm.hf:  # what transformers' hyperparameter_search does with backend="optuna": create_study's defaults
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    else:
        sampler = make_sampler(arm.sampler, seed, st.space, 1, dict(arm.sampler_kwargs))
        pruner = make_pruner(arm.pruner, dict(arm.pruner_kwargs),
                             PruneGuard(prune_after=arm.prune_after, min_trials=arm.prune_min_trials,
                                        false_kill=arm.false_kill), total_steps)
    study = optuna.create_study(direction="maximize" if table.maximize else "minimize", sampler=sampler, pruner=pruner)
    if st.base is not None:
        study.enqueue_trial(st.base)
    if arm.startup == "informed":  # as the sweeper counts them: the base trial among them, within the budget
        from sweeps.search.startup import informed_startup_params, informed_trials

        for params in informed_startup_params(st.space, informed_trials(dict(arm.sampler_kwargs), n_trials), st.base):
            study.enqueue_trial(params)
    return study


def replay_sweep(arm: Arm, table: Table, st: Setup, seed: int, n_trials: int, overhead_s: float) -> list[dict[str, Any]]:
    """One sweep of `n_trials`: per trial, the row it got, whether it was pruned, its observed value
    and the compute spent so far."""
    import optuna

    from sweeps.search.space import suggest

    total_steps = table.rows[0]["total_steps"] or table.rows[0]["evals"][-1]["step"]
    study = make_study(arm, table, st, seed, total_steps, n_trials)
    spent, out = 0.0, []
    for _ in range(n_trials):
        trial = study.ask()
        params = {k: suggest(trial, k, d) for k, d in st.space.distributions.items()}
        row = table.nearest(lookup_params(params, st.defaults))
        trial.set_user_attr("total_steps", total_steps)
        n_evals, pruned = len(row["evals"]), False
        for i, ev in enumerate(row["evals"], 1):
            trial.report(ev[table.metric], ev["step"])
            if i < len(row["evals"]) and trial.should_prune():
                n_evals, pruned = i, True
                break
        spent += table.cost(row, n_evals) + overhead_s
        value = table.objective(row, arm.objective_at, n_evals)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
        out.append({"row": row, "pruned": pruned, "n_evals": n_evals, "value": value, "spent": spent})
    return out


def sweep_outcome(trials: list[dict[str, Any]], table: Table, at: str, checkpoints: tuple[int, ...]) -> dict[str, Any]:
    best = table.best(at)
    sign = 1 if table.maximize else -1
    reach = {}
    for tol in NEAR_TARGETS:
        hit = next((t["spent"] for i, t in enumerate(trials) if not t["pruned"]
                    and sign * (t["value"] - best) >= -tol), math.inf)
        reach[tol] = hit
    top = table.quantile(at, 0.9)  # a target a sweep can reach however lucky the table's best row was
    reach["top10"] = next((t["spent"] for t in trials if not t["pruned"] and sign * (t["value"] - top) >= 0), math.inf)
    selected = {}
    for n in checkpoints:
        kept = [t for t in trials[:n] if not t["pruned"]]
        if kept:
            pick = max(kept, key=lambda t: sign * t["value"])
            selected[n] = pick["row"].get("test", {}).get("test_" + table.metric.removeprefix("eval_"), math.nan)
    kept_all = [t for t in trials if not t["pruned"]]
    kept_best = max((sign * table.objective(t["row"], at) for t in kept_all), default=-math.inf)
    false_kill = any(sign * table.objective(t["row"], at) > kept_best for t in trials if t["pruned"])
    full = sum(table.cost(t["row"], len(t["row"]["evals"])) for t in trials)
    ran = sum(table.cost(t["row"], t["n_evals"]) for t in trials)
    best_at = {n: max((sign * t["value"] for t in trials[:n] if not t["pruned"]), default=math.nan) * sign
               for n in checkpoints}
    return {"reach": reach, "selected": selected, "false_kill": false_kill, "spent": trials[-1]["spent"],
            "saved": 1 - ran / full if full else 0.0, "best_at": best_at}


def band(values: list[float], rng: np.random.Generator) -> dict[str, Any]:
    """Median, 90% band (5th-95th percentile across sweeps) and a bootstrap 95% interval on the median."""
    arr = np.array(values, dtype=float)
    finite = np.isfinite(arr)
    out = {"reached": float(finite.mean()), "n": len(arr)}
    if finite.mean() < 0.5:
        return {**out, "median": math.inf, "band": [math.nan, math.nan], "median_ci": [math.nan, math.nan]}
    boots = np.quantile(rng.choice(arr, size=(2000, len(arr))), 0.5, axis=1, method="inverted_cdf")
    q = lambda a, p: float(np.quantile(a, p, method="inverted_cdf"))  # noqa: E731 - no interpolation: inf stays inf
    return {**out, "median": q(arr, 0.5), "band": [q(arr, 0.05), q(arr, 0.95)],
            "median_ci": [q(boots, 0.025), q(boots, 0.975)]}


def run_arm(arm: Arm, table: Table, n_sweeps: int, n_trials: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    st = setup(arm, table)
    overhead = trial_overheads(table)["hf" if arm.hf else "ours"]
    outcomes = [sweep_outcome(replay_sweep(arm, table, st, seed, n_trials, overhead), table, arm.objective_at,
                              (min(10, n_trials), n_trials)) for seed in range(n_sweeps)]
    rng = np.random.default_rng(0)
    return {"arm": arm.label, "space": arm.space,
            "to_1pt": band([o["reach"][0.01] for o in outcomes], rng),
            "to_half_pt": band([o["reach"][0.005] for o in outcomes], rng),
            "to_top10": band([o["reach"]["top10"] for o in outcomes], rng),
            "_reach_top10": [o["reach"]["top10"] for o in outcomes],
            "test_at_10": float(np.nanmean([o["selected"].get(min(10, n_trials), math.nan) for o in outcomes])),
            f"test_at_{n_trials}": float(np.nanmean([o["selected"].get(n_trials, math.nan) for o in outcomes])),
            "false_kill_rate": float(np.mean([o["false_kill"] for o in outcomes])),
            "compute_saved": float(np.mean([o["saved"] for o in outcomes])),
            "best_at_10_band": [float(np.nanquantile([o["best_at"][min(10, n_trials)] for o in outcomes], q))
                                for q in (0.05, 0.5, 0.95)],
            "best_at_n_band": [float(np.nanquantile([o["best_at"][n_trials] for o in outcomes], q))
                               for q in (0.05, 0.5, 0.95)],
            "compute_n_trials": float(np.median([o["spent"] for o in outcomes])),
            "_reach_1pt": [o["reach"][0.01] for o in outcomes]}


# -- the replay against reality -----------------------------------------------------------------------
def real_best_after(arm: Arm, table: Table, seed: int, n_trials: int, workdir: Path) -> float:
    """One real sweep of the arm on the table's protocol (the demo default trial), `n_trials` trials on
    one worker; its best objective as the sweep scored it (HF: bench/hf_search.py, its own search)."""
    import subprocess

    import optuna

    from curves import PROTOCOLS

    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    workdir.mkdir(parents=True, exist_ok=True)
    if arm.hf:
        if table.name != "demo":
            raise ValueError("the HF arm's real sweep is wired for the demo protocol only")
        out = subprocess.run([sys.executable, str(BENCH / "hf_search.py"), "--n-trials", str(n_trials), "--sampler-seed",
                              str(seed), "--pruner", "median", "--max-train", "600", "--max-eval", "300",
                              "--max-steps", "76", "--eval-every", "19", "--output-dir", str(workdir / "hf_out")],
                             capture_output=True, text=True, env=env, cwd=workdir, check=True).stdout
        result = json.loads(next(line for line in out.splitlines() if line.startswith("HF_RESULT "))[len("HF_RESULT "):])
        return max(t["value"] for t in result["trials"] if t["state"] == "COMPLETE")
    overrides = [*PROTOCOLS[table.name]["overrides"], f"search_space={arm.space}", f"hydra.sweeper.n_trials={n_trials}",
                 f"hydra.sweeper.sampler={arm.sampler}", f"hydra.sweeper.sampler_seed={seed}", "hydra.sweeper.n_jobs=1",
                 f"hydra.sweeper.pruner={arm.pruner}", f"hydra.sweeper.prune_after={arm.prune_after}",
                 f"hydra.sweeper.prune_min_trials={arm.prune_min_trials}",
                 f"hydra.sweeper.prune_false_kill={arm.false_kill}",
                 f"hydra.sweeper.include_base={str(arm.include_base).lower()}",
                 f"hydra.sweeper.objective_at={arm.objective_at}", f"hydra.sweep.dir={workdir / 'multirun'}",
                 f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}"]
    overrides += [f"hydra.sweeper.{k}={v}" for k, v in arm.pruner_kwargs]
    # a key the arm leaves out of the space runs at the job's value: a plain value on the command line
    # pins a searched key (what the race does to the seed, without running the race after the search)
    overrides += [f"{k}={setup(arm, table).defaults[k]}" for k in arm.drop]
    overrides.append(f"hydra.sweeper.startup={arm.startup}")  # every arm says its start-up: the default moved
    subprocess.run([sys.executable, str(REPO / "sweep.py"), "-m", *overrides], capture_output=True, text=True,
                   env=env, cwd=workdir, check=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(workdir / "optuna-journal.log")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(values) if table.maximize else min(values)


def record_real(arms: list[Arm], table: Table, n_real: int, n_trials: int, root: Path, out: Path) -> None:
    """Run `n_real` real sweeps per arm (sampler seeds 1000...) and append each one's best to `out`
    (JSON lines: table, arm, seed, best), skipping those already there: a long check can resume."""
    done = {(r["table"], r["arm"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    for arm in arms:
        for k in range(n_real):
            if (table.name, arm.label, 1000 + k) in done:
                continue
            t0 = time.perf_counter()
            best = real_best_after(arm, table, 1000 + k, n_trials, root / f"{abs(hash(arm.label)) % 10**8}-{k}")
            with out.open("a") as f:
                f.write(json.dumps({"table": table.name, "arm": arm.label, "seed": 1000 + k, "best": best,
                                    "trials": n_trials, "wall_s": round(time.perf_counter() - t0, 1)}) + "\n")
            print(f"real sweep {table.name} | {arm.label} | seed {1000 + k} | best {best:.4f}", flush=True)


def validation_lines(results: list[dict[str, Any]], table: Table, real: Path) -> list[str]:
    """Each arm's real sweeps (from `record_real`) against the replay's 90% band of the best after 10 trials."""
    rows = [json.loads(line) for line in real.read_text().splitlines()] if real.exists() else []
    lines = [f"### The replay against real sweeps ({table.name}: `python sweep.py -m` on the table's protocol, 10 trials, "
             "one worker, sampler seeds 1000+)", "",
             "| arm | replay: best after 10 trials, 5% / median / 95% | real sweeps | inside the 90% band |", "|---|---|---|---|"]
    for res in results:
        reals = [r["best"] for r in rows if r["table"] == table.name and r["arm"] == res["arm"]]
        if not reals:
            continue
        lo, mid, hi = res["best_at_10_band"]
        inside = sum(lo - 1e-9 <= v <= hi + 1e-9 for v in reals)
        lines.append(f"| {res['arm']} | {lo:.4f} / {mid:.4f} / {hi:.4f} | {', '.join(f'{v:.4f}' for v in reals)} | "
                     f"{inside} of {len(reals)} |")
    return lines


def ratio(ours: list[float], theirs: list[float], rng: np.random.Generator) -> dict[str, Any]:
    """median(ours) / median(theirs) with a bootstrap 95% interval (sweeps resampled in each arm)."""
    a, b = np.array(ours, dtype=float), np.array(theirs, dtype=float)
    med = lambda x, axis=None: np.quantile(x, 0.5, axis=axis, method="inverted_cdf")  # noqa: E731
    if not (np.isfinite(med(a)) and np.isfinite(med(b))):
        return {"ratio": math.nan, "ci": [math.nan, math.nan]}
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = med(rng.choice(a, size=(2000, len(a))), 1) / med(rng.choice(b, size=(2000, len(b))), 1)
    boots = np.where(np.isnan(boots), np.inf, boots)  # inf / inf: neither reached, counted as no gain
    return {"ratio": float(med(a) / med(b)),
            "ci": [float(np.quantile(boots, 0.025, method="inverted_cdf")),
                   float(np.quantile(boots, 0.975, method="inverted_cdf"))]}


def fmt_band(b: dict[str, Any]) -> str:
    if not math.isfinite(b["median"]):
        return f"not reached in {1 - b['reached']:.0%} of sweeps"
    late = f"; {1 - b['reached']:.0%} not reached" if b["reached"] < 1 else ""
    return (f"{b['median']:.0f} s [{b['median_ci'][0]:.0f}, {b['median_ci'][1]:.0f}] "
            f"(90% of sweeps {b['band'][0]:.0f}-{b['band'][1]:.0f}{late})")


def markdown(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, tables: dict[str, Table],
             elapsed: float) -> str:
    lines = ["# Search strategies replayed on learning-curve tables", "",
             f"`python bench/replay.py --tables {' '.join(results)} --sweeps {args.sweeps} --trials {args.trials}` "
             f"({elapsed:.0f} s). Compute is trial-seconds (CPU-seconds of single-threaded trials), the median with a bootstrap 95% "
             "interval and the 5th-95th percentile of the sweeps; the lookup is the nearest tabulated config. "
             "The demo and SST-2 evals score 300 fixed rows, so one point is three rows: the table's best is one "
             "config's luckiest eval, and each table's notes say how many configs sit that close to it.", "",
             "Which arm is the product: `python sweep.py -m` as it ships since 2026-12 is the arm **prior space + "
             "informed start-up** (the prior-centred space, informed start-up, the median pruner from 50%, the base "
             "config first); the defaults before it are **+ prior-centred space** (the same with random start-up) "
             "and, before that, **old product default**.", ""]
    for name, arms in results.items():
        t = tables[name]
        drawn = sum(r["index"] >= 0 for r in t.rows)
        lines += [f"## {name}: {len(t.rows)} tabulated configs ({drawn} drawn at random, {len(t.rows) - drawn} a sweep "
                  f"asks for by construction: the base config and informed start-up's), best {t.metric} {t.best('best'):.4f} (best eval), "
                  f"{t.best('last'):.4f} (last eval); per-trial cost beside the steps: ours "
                  f"{trial_overheads(t)['ours']:.2f} s, HF {trial_overheads(t)['hf']:.2f} s", "",
                  f"| arm | space | compute to 1 pt | compute to 0.5 pt | compute to the top 10% ({t.metric} "
                  f"{'>=' if t.maximize else '<='} {t.quantile('best', 0.9):.4f}) | best {t.metric} after 10 trials (median, 5-95%) | "
                  f"after {args.trials} | test {t.metric.removeprefix('eval_')} of the pick at 10 trials | at {args.trials} | compute of {args.trials} trials "
                  "| best config killed | compute saved by pruning |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in arms:
            b10, bn = a["best_at_10_band"], a["best_at_n_band"]
            lines.append(f"| {a['arm']} | {a['space']} | {fmt_band(a['to_1pt'])} | {fmt_band(a['to_half_pt'])} | "
                         f"{fmt_band(a['to_top10'])} | "
                         f"{b10[1]:.4f} ({b10[0]:.4f}-{b10[2]:.4f}) | {bn[1]:.4f} ({bn[0]:.4f}-{bn[2]:.4f}) | "
                         f"{a['test_at_10']:.4f} | {a[f'test_at_{args.trials}']:.4f} | {a['compute_n_trials']:.0f} s | "
                         f"{a['false_kill_rate']:.1%} | {a['compute_saved']:.1%} |")
        hf = next((a for a in arms if a["arm"].startswith("HF")), None)
        if hf:
            rng = np.random.default_rng(1)
            lines += ["", "Ratio of median compute, arm / HF (below 1: sooner than HF; 95% bootstrap interval; nan where "
                      "fewer than half the sweeps of either arm got there):", "",
                      "| arm | to 1 point of the best | to the top 10% |", "|---|---|---|"]
            for a in arms:
                if a is not hf:
                    r1 = ratio(a["_reach_1pt"], hf["_reach_1pt"], rng)
                    rt = ratio(a["_reach_top10"], hf["_reach_top10"], rng)
                    lines.append(f"| {a['arm']} | {r1['ratio']:.2f} [{r1['ci'][0]:.2f}, {r1['ci'][1]:.2f}] | "
                                 f"{rt['ratio']:.2f} [{rt['ci'][0]:.2f}, {rt['ci'][1]:.2f}] |")
        lines += ["", *table_diagnostics(t, args.trials), ""]
    return "\n".join(lines)


def reachable_rows(space_name: str, table: Table, n_draws: int = 3000) -> set[int]:
    """The table rows a space's suggestions can be answered with at all: the nearest rows of
    `n_draws` uniform draws from the space (a near-best row outside this set is a target no arm
    searching that space can reach in the replay)."""
    import optuna

    from sweeps.search.space import suggest

    st = setup(Arm("reach", space_name), table)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = set()
    for _ in range(n_draws):
        trial = study.ask()
        params = {k: suggest(trial, k, d) for k, d in st.space.distributions.items()}
        out.add(table.nearest(lookup_params(params, st.defaults))["index"])
        study.tell(trial, 0.0)
    return out


def table_diagnostics(table: Table, n_trials: int) -> list[str]:
    """Why a target is or is not reachable on this table: how many rows sit within 1 / 0.5 point of
    its best and how many of them each space's suggestions can land on at all, and how well each eval
    ranks the configs as their last eval does (Spearman), beside the share of compute spent by then:
    what a pruner can know when it decides."""
    from scipy.stats import spearmanr

    sign = 1 if table.maximize else -1
    best = table.best("best")
    reach = {name: reachable_rows(name, table) for name in spaces_of(table.name)}
    lines = ["Why the targets are or are not reached on this table:", ""]
    for tol in NEAR_TARGETS:
        near = [r["index"] for r in table.rows if sign * (table.objective(r, "best") - best) >= -tol - 1e-12]
        inside = "; ".join(f"{sum(i in rows for i in near)} of them can be looked up from `{name}` "
                           f"({len(rows)} rows in all)" for name, rows in reach.items())
        lines.append(f"- {len(near)} of {len(table.rows)} tabulated configs are within {tol * 100:g} point of the best; "
                     f"{inside}.")
    n_evals = min(len(r["evals"]) for r in table.rows)
    full = [r for r in table.rows if len(r["evals"]) == n_evals]
    last = [r["evals"][-1][table.metric] for r in full]
    cells = []
    for j in range(n_evals - 1):
        rho = spearmanr([r["evals"][j][table.metric] for r in full], last).statistic
        share = np.median([r["evals"][j]["cpu_s"] / r["evals"][-1]["cpu_s"] for r in full if r["evals"][-1]["cpu_s"] > 0])
        cells.append(f"eval {j + 1} of {n_evals} ({share:.0%} of the compute): {rho:.2f}")
    lines.append("- rank correlation of an early eval with the last one, across configs: " + "; ".join(cells) + ".")
    return lines


def merge_results(path: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    """The replay's keys in bench/results.json: per table and arm, compute to 1 / 0.5 point (median,
    its 95% interval, the 90% band of sweeps, share reached), the ratio to HF's arm at 1 point, and
    the pruners' false kills and compute saved."""
    data = json.loads(path.read_text()) if path.exists() else {}
    keep = ("median", "median_ci", "band", "reached")
    rng = np.random.default_rng(1)
    for key in ("replay_compute_to_1pt", "replay_compute_to_half_pt", "replay_ratio_vs_hf_1pt",
                "replay_compute_to_top10pct", "replay_ratio_vs_hf_top10pct",
                "pruner_false_kill_rate", "pruner_compute_saved"):
        # this run's tables replace their own entries; the other tables' stay (a table can be replayed alone)
        data[key] = {k: v for k, v in (data.get(key) or {}).items() if k.split(": ", 1)[0] not in results}
    for name, arms in results.items():
        hf = next((a for a in arms if a["arm"].startswith("HF")), None)
        for a in arms:
            label = f"{name}: {a['arm']}"
            data["replay_compute_to_1pt"][label] = {k: a["to_1pt"][k] for k in keep}
            data["replay_compute_to_half_pt"][label] = {k: a["to_half_pt"][k] for k in keep}
            data["replay_compute_to_top10pct"][label] = {k: a["to_top10"][k] for k in keep}
            data["pruner_false_kill_rate"][label] = a["false_kill_rate"]
            data["pruner_compute_saved"][label] = a["compute_saved"]
            if hf is not None and a is not hf:
                data["replay_ratio_vs_hf_1pt"][label] = ratio(a["_reach_1pt"], hf["_reach_1pt"], rng)
                data["replay_ratio_vs_hf_top10pct"][label] = ratio(a["_reach_top10"], hf["_reach_top10"], rng)
    path.write_text(json.dumps(finite(data), indent=1) + "\n")


def finite(x: Any) -> Any:
    """The value with every non-finite float as null (not reached), so the file stays strict JSON."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def smoke_table(tmp: Path) -> None:
    """A tiny demo table recorded on the spot through the real trainer (the suite's check that the
    recorder and the replay still fit the product)."""
    import subprocess

    env_cmd = [sys.executable, str(BENCH / "curves.py"), "record", "--table", "demo", "--configs", "4", "--smoke",
               "--out", str(tmp / "demo.shard0of1.jsonl")]
    subprocess.run(env_cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    global TABLES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=["demo", "sst2"])
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the per-arm results as JSON")
    parser.add_argument("--results", type=Path, default=None,
                        help="merge the replay's keys into this results file (bench/results.json)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--real", type=int, default=0, metavar="K",
                        help="run K real sweeps per validated arm on the first table first (resumable), into --real-file")
    parser.add_argument("--real-file", type=Path, default=BENCH / "work" / "replay_real.jsonl")  # a run store, not committed: replay.md holds its table
    parser.add_argument("--validate-arms", default="all",
                        help="`all`, or comma-separated prefixes of the arms whose replay is checked against real sweeps")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH))
    if args.smoke:
        import tempfile

        TABLES = Path(tempfile.mkdtemp(prefix="replay-smoke-"))
        smoke_table(TABLES)
        args.tables, args.sweeps, args.trials = ["demo"], 3, 6
        args.real_file = TABLES / "no-real-sweeps.jsonl"  # the committed real sweeps belong to the real tables
    t0 = time.perf_counter()
    tables = {name: Table.load(name) for name in args.tables}
    wanted = [p.strip() for p in args.validate_arms.split(",")]
    if args.real:
        import tempfile

        first = args.tables[0]
        record_real([a for a in default_arms(first) if wanted == ["all"] or any(a.label.startswith(w) for w in wanted)],
                    tables[first],
                    args.real, 10, Path(tempfile.mkdtemp(prefix="replay-real-")), args.real_file)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, table in tables.items():
        if not table.rows:
            print(f"{name}: no table rows under {TABLES}; record them with bench/curves.py", file=sys.stderr)
            continue
        results[name] = []
        for arm in default_arms(name):
            t_arm = time.perf_counter()
            results[name].append(run_arm(arm, table, args.sweeps, args.trials))
            print(f"{name} | {arm.label} | {fmt_band(results[name][-1]['to_1pt'])} | {time.perf_counter() - t_arm:.0f} s",
                  flush=True)
    text = markdown(results, args, tables, time.perf_counter() - t0)
    for name, res in results.items():
        lines = validation_lines(res, tables[name], args.real_file)
        if len(lines) > 4:
            text += "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.results:
        merge_results(args.results, results)
    if args.json:
        args.json.write_text(json.dumps(finite({k: [{kk: vv for kk, vv in a.items() if not kk.startswith("_")} for a in v]
                                                for k, v in results.items()}), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
