"""Re-run the top configs of an existing study with fresh seeds.

    python -m analysis.reproduce [--storage URL] [--study NAME] --top-k 2 --n-seeds 3 [--n-jobs 2]

The same machinery as `hydra.sweeper.reproduce.*` at the end of a sweep (sweeps/reproduce.py):
replicates go to the companion study `<study>--reproduce` and appear as child runs of the sweep's
MLflow parent; rerunning resumes. Then `python -m analysis.report` shows the reproducibility
section. Thin CLI: the work happens in `sweeps/` (it trains, so it needs the training stack).
"""

from __future__ import annotations

import argparse
import sys

import optuna
from omegaconf import OmegaConf

from sweeps.storage import is_masked, latest_study_name, mask_url, open_storage, storage_url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: ./optuna-journal.log)")
    parser.add_argument("--study", default=None, help="study name (default: the latest)")
    parser.add_argument("--top-k", type=int, required=True, help="how many of the best configs to re-run")
    parser.add_argument("--n-seeds", type=int, required=True,
                        help="crossed: S init x S data-order seeds per config; one_at_a_time: S per seed kind")
    parser.add_argument("--design", default="crossed", choices=["crossed", "one_at_a_time"],
                        help="crossed (default; separates init from data-order variance) or one_at_a_time")
    parser.add_argument("--seed-kinds", default="seed,data_seed,both",
                        help="one_at_a_time only: which seeds vary: seed (init+dropout), data_seed (data order), both")
    parser.add_argument("--no-determinism-check", action="store_true", help="skip re-running the winner twice")
    parser.add_argument("--n-jobs", type=int, default=None, help="worker processes (default: one per GPU, else 1)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sweeps.reproduce import run_reproduction
    from sweeps.search_space import SearchSpace
    from sweeps.session import SweepSession
    from sweeps.sweeper_config import LoraOptunaSweeperConf, ReproduceConf
    from sweeps.compose import ComposeSpec
    from sweeps.tracking import RunBook, tracking_uri

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
                                                    design=args.design,
                                                    determinism_check=not args.no_determinism_check)))
    uri = args.tracking_uri or attrs.get("mlflow_tracking_uri", "")
    if not uri or is_masked(uri):
        uri = tracking_uri(None)
    compose = ComposeSpec(attrs["compose"]["config_dir"], attrs["compose"]["config_name"],
                          tuple(attrs["compose"]["overrides"]))
    session = SweepSession(conf, None, SearchSpace(fixed=dict(attrs.get("fixed_params", {}))), compose, url, name,
                           list(attrs["objectives"]), list(attrs["directions"]), uri, attrs["trial_root"])
    runbook = RunBook(uri, attrs["mlflow_experiment_name"], parent_run_id=attrs.get("mlflow_parent_run_id"))
    print(f"reproducing the top {args.top_k} of {name!r} ({mask_url(url)})")
    repro = run_reproduction(study, storage, session, runbook)
    done = len(repro.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    print(f"{done} replicate runs complete in study {repro.study_name!r}; "
          f"report: python -m analysis.report --study {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
