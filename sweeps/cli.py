"""`lora-sweep <command>`: the tools around a sweep under one installed command. Each command is
also a module entry point (`python -m analysis.report`, ...); the sweep itself is `python sweep.py -m`.
"""

from __future__ import annotations

import importlib
import sys

from sweeps.commands import COMMANDS, usage


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lora-sweep: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
