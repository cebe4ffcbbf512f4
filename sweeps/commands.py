"""The commands of `lora-sweep`, the modules that run them, and which of our modules `python -m` may
run. Import-light: sweeps/__init__ imports it before any `python -m sweeps.<module>` runs (the
registry is not in sweeps/cli.py so that `python -m sweeps.cli` is not imported before it runs)."""

from __future__ import annotations

import sys

# command -> (module whose main(argv) runs it, also as `python -m <module>`; what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("analysis.report", "write the report of a study (tables, figures, seed statistics, failures)"),
    "reproduce": ("sweeps.reproduce", "re-run a study's best configs on fresh seeds"),
    "export": ("sweeps.export", "export (or merge) a trial's adapter, the winner by default"),
    "chat": ("sweeps.chat", "chat with a trial's adapter, the winner by default"),
    "slurm": ("sweeps.slurm", "write and submit the sbatch script that runs the sweep on N nodes"),
    "dry-run": ("sweeps.dry_run", "check the config and print the search space and sample configs; trains nothing"),
    "ui": ("sweeps.ui", "serve the sweep's MLflow runs and optuna-dashboard on local ports, until Ctrl-C"),
}
# Modules that run with `python -m`: the commands', sweeps.cli (= lora-sweep) and a kept alias. The
# sweep's MLflow writer process also runs as a module, started by the sweep with a pipe on its stdin.
ENTRY_MODULES = {"sweeps.cli", "analysis.reproduce", *(module for module, _ in COMMANDS.values())}
INTERNAL_MODULES = {"sweeps.tracking.writer": "the sweep's MLflow writer process, started by the sweep"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: lora-sweep <command> [arguments]   (lora-sweep <command> --help for its arguments)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\nThe sweep itself: python sweep.py -m [overrides]")


def module_run_by_dash_m(argv: list[str]) -> str | None:
    """The module of `python [options] -m <module> ...` (argv as in sys.orig_argv), else None."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "--check-hash-based-pycs":
            next(args, None)
        elif not arg.startswith("-") or arg == "-":
            return None  # a script
        elif not arg.startswith("--"):
            for i, flag in enumerate(arg[1:], start=2):  # a cluster of short options, e.g. -Im
                if flag in "cmWX":  # options with a value: the rest of the cluster, else the next word
                    value = arg[i:] or next(args, None)
                    if flag == "c":
                        return None
                    if flag == "m":
                        return value
                    break
    return None


def refuse_non_commands(package: str) -> None:
    """Called by our packages' __init__ while `python -m` imports them (sys.argv[0] is "-m" then):
    a library module run as a command would import and exit 0 without a word, so say that it is not
    a command and which ones there are, and exit 2."""
    module = module_run_by_dash_m(sys.orig_argv)
    if module is None or not (module == package or module.startswith(package + ".")) or module in ENTRY_MODULES:
        return
    if module in INTERNAL_MODULES and not sys.stdin.isatty():
        return
    what = INTERNAL_MODULES.get(module, "a library module")
    sys.stderr.write(f"python -m {module}: not a command ({what}); use `lora-sweep <command>` or "
                     f"`python sweep.py -m [overrides]`.\n\n{usage()}\n")
    raise SystemExit(2)
