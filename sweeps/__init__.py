"""The study side of a sweep: search space, sampler/pruner, workers, MLflow bookkeeping.

Kept import-light (no torch): Hydra imports the sweeper plugin, and so this package, at every start.
"""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m sweeps.<module>`: runpy imports this package before the module
    from sweeps.commands import refuse_non_commands

    refuse_non_commands(__name__)  # a library module run as a command says so instead of exiting 0 silently
