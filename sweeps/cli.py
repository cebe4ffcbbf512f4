"""`lora-sweep <command>`: the tools around a sweep under one installed command. Each command is
also a module entry point (`python -m analysis.report`, ...); the sweep itself is `python sweep.py -m`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

# command -> (module whose main(argv) runs it, what it does); dry-run goes through sweep.py
COMMANDS: dict[str, tuple[str | None, str]] = {
    "report": ("analysis.report", "write the report of a study (tables, figures, seed statistics, failures)"),
    "reproduce": ("sweeps.reproduce", "re-run a study's best configs on fresh seeds"),
    "export": ("sweeps.export", "export (or merge) a trial's adapter, the winner by default"),
    "chat": ("sweeps.chat", "chat with a trial's adapter, the winner by default"),
    "slurm": ("sweeps.slurm", "write and submit the sbatch script that runs the sweep on N nodes"),
    "dry-run": (None, "check the config and print the search space and sample configs; trains nothing"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: lora-sweep <command> [arguments]   (lora-sweep <command> --help for its arguments)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\nThe sweep itself: python sweep.py -m [overrides]")


def sweep_script() -> Path:
    """sweep.py of the clone this package runs from (an editable install), else of the current directory."""
    for candidate in (Path(__file__).resolve().parents[1] / "sweep.py", Path.cwd() / "sweep.py"):
        if candidate.is_file():
            return candidate
    raise SystemExit("lora-sweep dry-run: sweep.py not found beside the installed package nor in the current "
                     "directory; run it from a clone of the project (pip install -e .)")


def dry_run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lora-sweep dry-run [hydra overrides ...]\n\n"
              "Runs `python sweep.py -m hydra.sweeper.dry_run=true [overrides]`: validates the config and the data,\n"
              "prints the search space, sample configs and the worker plan, and trains nothing.")
        return 0
    return subprocess.call([sys.executable, str(sweep_script()), "-m", "hydra.sweeper.dry_run=true", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lora-sweep: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if module is None:
        return dry_run(rest)
    return int(importlib.import_module(module).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
