"""`hydra.sweeper.dry_run=true`: everything a sweep would check and sample, printed, with nothing
trained and nothing written to the Optuna or MLflow stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from rich.table import Table

from sweeps.runtime.compose import ComposeSpec
from sweeps.progress import console
from sweeps.search.samplers import kwargs_of, make_sampler, sampler_seed
from sweeps.search.space import SearchSpace, base_params, suggest
from sweeps.search.startup import DEFAULT_STARTUP, informed_startup_params, informed_trials, why_not_informed, why_not_sampler
from sweeps.search.storage import mask_url
from sweeps.runtime.worker_plan import plan_for

N_SAMPLES = 5


def sample_configs(conf: DictConfig, space: SearchSpace, directions: list[str], study_name: str,
                   n: int = N_SAMPLES) -> list[dict[str, Any]]:
    """The first `n` configurations worker 0 of a fresh sweep would propose (same sampler seed;
    an in-memory study, so no store is touched)."""
    seed = sampler_seed(conf.sampler, conf.sampler_seed, study_name, 0, 0)
    sampler = make_sampler(conf.sampler, seed, space, len(directions), kwargs_of(conf.sampler_kwargs))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created": nothing is, in a dry run
    try:
        study = optuna.create_study(sampler=sampler, directions=directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    samples = []
    for _ in range(n):
        trial = study.ask()
        sample = {key: suggest(trial, key, dist) for key, dist in space.distributions.items()}
        if space.custom is not None:  # hydra.sweeper.custom_search_space: its params join the sample
            sample.update(space.custom.apply(trial, dict(space.fixed)))
        samples.append(sample)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no value: keep proposing startup samples
    return samples


def print_configs(title: str, space: SearchSpace, configs: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    keys = list(dict.fromkeys([*space.distributions, *(k for config in configs for k in config)]))  # a custom space's keys vary
    for key in ["#", *keys]:
        table.add_column(key)
    for i, config in enumerate(configs):
        table.add_row(str(i), *[("-" if k not in config else f"{config[k]:.4g}" if isinstance(config[k], float)
                                 else str(config[k])) for k in keys])
    console.print(table)


def print_informed_startup(conf: DictConfig, job: DictConfig, space: SearchSpace) -> bool:
    """The trials hydra.sweeper.startup=informed enqueues into a new study (after the base trial);
    False when it enqueues none (and why)."""
    if why_not_sampler(conf.sampler):
        console.print(f"informed start-up: {why_not_sampler(conf.sampler)}")
        return False
    reason = why_not_informed(space)
    if reason:
        console.print(f"informed start-up: {reason}; the sampler's random start-up runs instead")
        return False
    params, outside = base_params(job, space)
    base = params if conf.get("include_base", True) and not outside else None
    n = informed_trials(kwargs_of(conf.sampler_kwargs), int(conf.n_trials))
    configs = informed_startup_params(space, n, base)
    print_configs(f"informed start-up: {len(configs)} trials run first{' after the base config' if base else ''}, "
                  "then the sampler", space, configs)
    return True


def print_dry_run(conf: DictConfig, job: DictConfig, space: SearchSpace, compose: ComposeSpec, study_name: str,
                  url: str, objectives: list[str], directions: list[str]) -> None:
    import trainer

    console.print(f"[bold]dry run[/] — study {study_name!r} on {mask_url(url)} (nothing will be written)")
    console.print(f"objectives: {list(zip(objectives, directions))}; sampler {conf.sampler}, pruner {conf.pruner}, "
                  f"n_trials {conf.n_trials}")
    table = Table(title="search space")
    table.add_column("key")
    table.add_column("grammar")
    table.add_column("Optuna distribution")
    for key, dist in space.distributions.items():
        table.add_row(key, space.grammar.get(key, ""), repr(dist))
    for key, value in space.fixed.items():
        table.add_row(key, space.grammar.get(key, ""), f"fixed = {value!r}")
    console.print(table)

    informed = conf.get("startup", DEFAULT_STARTUP) == "informed" and print_informed_startup(conf, job, space)
    samples = sample_configs(conf, space, directions, study_name)
    if informed:
        console.print("below: the sampler's own first draws, what hydra.sweeper.startup=random runs; after the "
                      "start-up above, the sampler proposes from those trials' results")
    print_configs(f"first {len(samples)} sampled configs", space, samples)

    report = trainer.preflight(job)
    table = Table(title=f"trainable parameters per target-module preset ({report.model_type}, r={job.lora.r}, "
                        f"base {report.base_params:,} params)")
    for name in ("preset", "modules", "trainable params", "% of base"):
        table.add_column(name)
    for preset, modules in report.target_modules_by_preset.items():
        count = report.trainable_params_by_preset[preset]
        table.add_row(preset, ", ".join(modules), f"{count:,}", f"{100 * count / max(report.base_params, 1):.2f}%")
    console.print(table)
    labels = f", {report.num_labels} labels" if report.num_labels else ""
    console.print(f"data: {report.num_train} train / {report.num_eval} eval examples{labels}")
    device = "cuda" if plan_for(conf).on_gpu else "cpu"
    estimate = report.estimate_memory_mb(job, device=device)
    what = "GPU memory allocated" if device == "cuda" else "process memory (RSS) beyond the Python runtime"
    console.print(f"estimated peak {what} per trial (base config, batch {job.train.batch_size}, "
                  f"length {job.train.max_seq_length}, quant {job.quant.mode}, precision {job.train.precision}"
                  f"{', gradient checkpointing' if job.train.gradient_checkpointing else ''}): {estimate:,.0f} MiB")
    if job.task.type == "sft":
        console.print(f"sft: learning rate {job.train.learning_rate:g}, max_new_tokens {job.task.max_new_tokens}, "
                      f"objective eval_{job.task.metric} ({job.task.direction}); `auto` keys resolved at pre-flight above")


def sweep_script() -> Path:
    """sweep.py of the clone this package runs from (an editable install), else of the current directory."""
    for candidate in (Path(__file__).resolve().parents[1] / "sweep.py", Path.cwd() / "sweep.py"):
        if candidate.is_file():
            return candidate
    raise SystemExit("lora-sweep dry-run: sweep.py not found beside the installed package nor in the current "
                     "directory; run it from a clone of the project (pip install -e .)")


def main(argv: list[str] | None = None) -> int:
    """`lora-sweep dry-run [overrides]`, also `python -m sweeps.dry_run [overrides]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: lora-sweep dry-run [hydra overrides ...]   (also: python -m sweeps.dry_run [overrides])\n\n"
              "Runs `python sweep.py -m hydra.sweeper.dry_run=true [overrides]`: validates the config and the data,\n"
              "prints the search space, sample configs and the worker plan, and trains nothing.")
        return 0
    return subprocess.call([sys.executable, str(sweep_script()), "-m", "hydra.sweeper.dry_run=true", *argv])


if __name__ == "__main__":
    sys.exit(main())
