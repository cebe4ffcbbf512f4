"""Re-run the best configs of a study with fresh seeds (the evidence that a winner is real).

Replicates live in a companion study `<study>--reproduce` on the same storage, so they never feed
the search sampler nor count against `n_trials`. Each replicate keeps the config of the trial it
replicates and draws fresh seeds. The default design is paired: every config runs on the same S²
fresh (init seed, data seed) pairs, no seed shared between pairs, so the lead test (a paired t-test
on independent pairs) finds a 2-SD lead 80% / 99.7% of the time on 2 x 2 / 3 x 3 at SST-2's measured
noise, where the crossed grid's test finds 29% / 79% (bench/results/lead_power.md). The crossed
design (Dodge et al. 2020) runs every config on a grid of S fresh init seeds x S fresh data-order
seeds, as many runs, which separates the variance of the two sources (and their interaction) at
the price of that power. The older one-at-a-time design changes only `seed`, only `data_seed`, or
both. No design reuses a seed the search or the seed race (`<study>--race`) ran with, so the
reproduced mean carries none of their selection's luck. The winner is also re-run with its own
seeds, twice, to check bitwise determinism. Enqueuing is idempotent, so an interrupted
reproduction resumes where it stopped, in the design it started with (a study's replicates are
read by the design their `seed_kind` records; one study holds one design).

On an existing study: `lora-sweep reproduce --top-k 2 --n-seeds 3` (= `python -m sweeps.reproduce`,
or `python -m analysis.reproduce`); then `lora-sweep report` shows the reproducibility section.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeps.progress import console, top_trials_table  # noqa: F401
from sweeps.search.space import SearchSpace
from sweeps.seed_stats import interval_text
from sweeps.search.storage import RACE_SUFFIX, REPRODUCE_SUFFIX, is_masked, latest_study_name, mask_url, open_storage, storage_url
from sweeps.search.study import top_trials

FRESH_SEED_BASE = 10_000  # replicate seeds never collide with seeds a search space would try


DESIGNS = ("crossed", "paired", "one_at_a_time")
DEFAULT_DESIGN = "paired"
# the seed kinds each design's replicates record (determinism re-runs belong to every design)
DESIGN_OF_KIND = {"crossed": "crossed", "paired": "paired", "seed": "one_at_a_time", "data_seed": "one_at_a_time",
                  "both": "one_at_a_time"}
SEED_ATTRS = ("seed", "data_seed", "replicate_seed", "replicate_data_seed")


def fresh_seed_values(trials: list[optuna.trial.FrozenTrial], n: int, avoid: Collection[int] = ()) -> list[int]:
    """n seeds from FRESH_SEED_BASE up that none of `trials` ran with (as init or data seed) and
    none in `avoid`: a replicate on a seed the search (or the race) selected would carry the
    selection's luck. The same list for every config, so their replicates pair seed for seed."""
    used = {int(t.user_attrs[k]) for t in trials for k in ("seed", "data_seed") if k in t.user_attrs}
    used |= {int(v) for v in avoid}
    out, candidate = [], FRESH_SEED_BASE
    while len(out) < n:
        if candidate not in used:
            out.append(candidate)
        candidate += 1
    return out


def race_seed_values(storage: Any, study_name: str) -> set[int]:
    """Every seed value (init or data order) the seed race of `study_name` ran or queued, in any
    state; empty where the study had no race. The race picked its winner on these seeds, so a
    reproduction on one of them would carry the race's selection luck."""
    try:
        race = optuna.load_study(study_name=study_name + RACE_SUFFIX, storage=storage)
    except KeyError:
        return set()
    seeds = set()
    for t in race.get_trials(deepcopy=False):
        attrs = {**t.user_attrs.get("overrides", {}), **t.user_attrs}
        seeds |= {int(attrs[k]) for k in SEED_ATTRS if attrs.get(k) is not None}
    return seeds


def recorded_design(repro: optuna.Study) -> str | None:
    """The design a study's reproduction already ran (from its replicates' `seed_kind`), or None
    where it has no replicate yet. Studies from before `paired` became the default read as the
    crossed design they ran."""
    kinds = {t.user_attrs.get("seed_kind") for t in repro.get_trials(deepcopy=False)}
    designs = {DESIGN_OF_KIND[k] for k in kinds if k in DESIGN_OF_KIND}
    return designs.pop() if len(designs) == 1 else None


def plan_replicates(study: optuna.Study, top_k: int, n_seeds: int, seed_kinds: list[str],
                    determinism_check: bool, design: str = DEFAULT_DESIGN,
                    avoid_seeds: Collection[int] = ()) -> list[dict[str, Any]]:
    """One entry per replicate run: its overrides and the user attrs the report reads. No fresh
    seed is one the reproduced configs ran with or one in `avoid_seeds` (the race's seeds).

    crossed: n_seeds fresh init seeds x n_seeds fresh data seeds per config (n_seeds² runs);
    paired: n_seeds² fresh (init seed, data seed) pairs per config, the same pairs for every config,
    the init seeds and the data seeds each drawn once (pair k: the k-th of n_seeds² fresh init
    seeds with the k-th of n_seeds² further fresh data seeds), so no two pairs share a seed;
    one_at_a_time: n_seeds runs per kind in `seed_kinds`."""
    if design not in DESIGNS:
        raise ValueError(f"hydra.sweeper.reproduce.design: {design!r}; allowed: {', '.join(DESIGNS)}")
    plan = []
    top = top_trials(study, top_k)
    fresh_seeds = fresh_seed_values(top, 2 * n_seeds**2 if design == "paired" else n_seeds, avoid_seeds)
    for rank, trial in enumerate(top):
        seed, data_seed = int(trial.user_attrs["seed"]), int(trial.user_attrs["data_seed"])
        base = {k: v for k, v in trial.params.items() if k not in ("seed", "data_seed")}
        if design == "crossed":
            for i in range(n_seeds):
                for j in range(n_seeds):
                    entry = _entry(trial, rank, "crossed", i * n_seeds + j, base, fresh_seeds[i], fresh_seeds[j])
                    plan.append(entry)
        if design == "paired":
            pairs = n_seeds**2
            plan += [_entry(trial, rank, "paired", k, base, fresh_seeds[k], fresh_seeds[pairs + k]) for k in range(pairs)]
        for kind in (seed_kinds if design == "one_at_a_time" else []):
            for i in range(n_seeds):
                fresh = fresh_seeds[i]
                new_seed = fresh if kind in ("seed", "both") else seed
                new_data_seed = fresh if kind in ("data_seed", "both") else data_seed
                plan.append(_entry(trial, rank, kind, i, base, new_seed, new_data_seed))
        if determinism_check and rank == 0:
            plan += [_entry(trial, rank, "determinism", i, base, seed, data_seed) for i in range(2)]
    return plan


def _entry(trial, rank, kind, index, base, seed, data_seed) -> dict[str, Any]:
    return {"overrides": {**base, "seed": seed, "data_seed": data_seed},
            "user_attrs": {"replicates_trial": trial.number, "sweep_rank": rank, "seed_kind": kind,
                           "replicate_key": f"{trial.number}:{kind}:{index}", "replicate_seed": seed,
                           "replicate_data_seed": data_seed, "sweep_value": trial.values[0]}}


def enqueue_plan(repro: optuna.Study, plan: list[dict[str, Any]]) -> int:
    """Enqueue what is not already done, running or queued; returns the budget: every replicate
    finished so far (earlier plans included) plus those now queued."""
    have = {t.user_attrs.get("replicate_key") for t in repro.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)}
    for entry in plan:
        if entry["user_attrs"]["replicate_key"] not in have:
            attrs = {**entry["user_attrs"], "overrides": entry["overrides"]}
            repro.enqueue_trial({}, user_attrs=attrs)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return len(repro.get_trials(deepcopy=False, states=live))


def reproduce_step(study: optuna.Study, storage, session, runbook) -> None:
    """The session's step after the search: the reproduction, where `reproduce.top_k` and
    `reproduce.n_seeds` ask for one."""
    if int(session.conf.reproduce.top_k) > 0 and int(session.conf.reproduce.n_seeds) > 0:
        run_reproduction(study, storage, session, runbook)


def run_reproduction(study: optuna.Study, storage, session, runbook, design_asked: bool = False) -> optuna.Study:
    """Plan, enqueue and run the replicates in new workers on the sweep's plan, under its MLflow parent.
    `design_asked`: `reproduce.design` was named by the user (the CLI's --design), not a default."""
    conf = session.conf.reproduce
    # on a resume, the replicates left RUNNING are failed there; enqueue_plan below queues them again
    repro = session.open_companion(study, storage, REPRODUCE_SUFFIX, runbook)
    design = resolve_design(str(conf.get("design", DEFAULT_DESIGN)), recorded_design(repro), repro.study_name,
                            design_asked)
    plan = plan_replicates(study, int(conf.top_k), int(conf.n_seeds), list(conf.seed_kinds), bool(conf.determinism_check),
                           design, avoid_seeds=race_seed_values(storage, study.study_name))
    n = enqueue_plan(repro, plan)
    grid = {"crossed": f"{conf.n_seeds} init × {conf.n_seeds} data-order seeds (crossed)",
            "paired": f"{int(conf.n_seeds) ** 2} fresh (init, data-order) seed pairs shared by the configs (paired)",
            }.get(design, f"{conf.n_seeds} seed(s) × {list(conf.seed_kinds)}")
    console.print(f"reproduce: top {conf.top_k} config(s) × {grid}"
                  f"{' + determinism check' if conf.determinism_check else ''} = {len(plan)} runs")
    fixed = SearchSpace(fixed=dict(session.space.fixed))
    specs = session.worker_specs(repro.study_name, n, fixed, session.objectives[:1], replay_only=True)
    session.watch(session.supervisor(repro, runbook, specs, n), repro, n, "reproduce")
    report_held_out(storage, study, runbook)
    return repro


def resolve_design(asked: str, recorded: str | None, repro_name: str, explicit: bool = False) -> str:
    """The design to run. A study's reproduction keeps the design its replicates record (a resume,
    or a study reproduced before `paired` became the default: its grids stay complete and its
    report reads them as they were run), unless the user named another one on the command line
    (`explicit`), which is run with a warning: the report reads each config by its own replicates'
    design, and the lead test of two configs under different designs falls back to Welch."""
    if recorded is None or asked == recorded:
        return asked
    if explicit:
        console.print(f"reproduce: {repro_name!r} already holds {recorded} replicates; adding {asked} ones as asked "
                      f"(a config replicated under both is read as independent runs; --design {recorded} keeps one "
                      "design)")
        return asked
    console.print(f"reproduce: {repro_name!r} already holds {recorded} replicates, so this reproduction goes on with "
                  f"the {recorded} design (one design per study; `lora-sweep reproduce --design {asked}` adds "
                  f"{asked} replicates)")
    return recorded


def report_held_out(storage, study: optuna.Study, runbook) -> None:
    """The winner's score on data.test_split over its fresh-seed replicates, beside its validation
    mean: printed, and on the MLflow parent run (`winner_test_mean`, its 95% interval, n)."""
    from analysis.context import load_report_data
    from analysis.reproducibility import held_out

    d = load_report_data(storage, study.study_name)
    best = d.best()
    table = held_out(d.repro, d.reps, d.metric, d.tuned_seeds)
    row = table[table["config"] == int(best["number"])] if best is not None and not table.empty else table
    if row.empty:
        return
    r = row.iloc[0]
    name = "test_" + d.metric.removeprefix("eval_")
    console.print(f"held-out {name} of the winner #{int(r['config'])}: "
                  + interval_text({"n": int(r["n"]), "mean": r["test_mean"], "ci_low": r["test_ci_low"],
                                   "ci_high": r["test_ci_high"], "no_variation": bool(r["no_variation"])})
                  + " over fresh-seed replicates "
                  f"(their validation mean {r['validation_mean']:.4f})")
    if runbook is not None and runbook.parent_run_id:
        runbook.log_metric_dict(runbook.parent_run_id, {
            "winner_test_mean": float(r["test_mean"]), "winner_test_ci_low": float(r["test_ci_low"]),
            "winner_test_ci_high": float(r["test_ci_high"]), "winner_test_n": float(r["n"]),
            "winner_replicate_validation_mean": float(r["validation_mean"])}, step=None)


COMMAND_DOC = "Re-run the top configs of an existing study with fresh seeds."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lora-sweep reproduce", description=COMMAND_DOC)
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: ./optuna-journal.log)")
    parser.add_argument("--study", default=None, help="study name (default: the latest)")
    parser.add_argument("--top-k", type=int, required=True, help="how many of the best configs to re-run")
    parser.add_argument("--n-seeds", type=int, required=True,
                        help="paired: S^2 fresh seed pairs per config; crossed: S init x S data-order seeds per "
                             "config; one_at_a_time: S per seed kind")
    parser.add_argument("--design", default=None, choices=list(DESIGNS),
                        help="paired (default: fresh seed pairs shared by the configs, the more powerful lead test), "
                             "crossed (as many runs on an init x data-order seed grid: splits init from data-order "
                             "variance) or one_at_a_time; unset, a study whose reproduction already ran keeps its "
                             "design")
    parser.add_argument("--seed-kinds", default="seed,data_seed,both",
                        help="one_at_a_time only: which seeds vary: seed (init+dropout), data_seed (data order), both")
    parser.add_argument("--no-determinism-check", action="store_true", help="skip re-running the winner twice")
    parser.add_argument("--n-jobs", type=int, default=None, help="worker processes (default: one per GPU, else 1)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sweeps.runtime.session import SweepSession
    from sweeps.sweeper_config import LoraOptunaSweeperConf, ReproduceConf
    from sweeps.runtime.compose import ComposeSpec
    from sweeps.tracking.runbook import RunBook, tracking_uri

    args = parse_args(argv)
    url = storage_url(args.storage)
    storage = open_storage(url)
    try:
        name = args.study or latest_study_name(storage)
        study = optuna.load_study(study_name=name, storage=storage)
    except (KeyError, LookupError) as exc:
        print(f"error: --study: {exc}", file=sys.stderr)
        return 2
    attrs = study.user_attrs
    if "compose" not in attrs:
        print(f"error: --study: {name!r} was not created by `python sweep.py -m`", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.seed_kinds.split(",") if k.strip()]
    conf = OmegaConf.structured(LoraOptunaSweeperConf(
        n_jobs=args.n_jobs, reproduce=ReproduceConf(top_k=args.top_k, n_seeds=args.n_seeds, seed_kinds=kinds,
                                                    design=args.design or DEFAULT_DESIGN,
                                                    determinism_check=not args.no_determinism_check)))
    uri = args.tracking_uri or attrs.get("mlflow_tracking_uri", "")
    if not uri or is_masked(uri):
        uri = tracking_uri(None)
    compose = ComposeSpec(attrs["compose"]["config_dir"], attrs["compose"]["config_name"],
                          tuple(attrs["compose"]["overrides"]))
    session = SweepSession(conf, None, SearchSpace(fixed=dict(attrs.get("fixed_params", {}))), compose, url=url,
                           study_name=name, objectives=list(attrs["objectives"]), directions=list(attrs["directions"]),
                           tracking_uri=uri, trial_root=attrs["trial_root"])
    runbook = RunBook(uri, attrs["mlflow_experiment_name"], parent_run_id=attrs.get("mlflow_parent_run_id"))
    print(f"reproducing the top {args.top_k} of {name!r} ({mask_url(url)})")
    repro = run_reproduction(study, storage, session, runbook, design_asked=args.design is not None)
    done = len(repro.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    print(f"{done} replicate runs complete in study {repro.study_name!r}; "
          f"report: python -m analysis.report --study {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
