"""Post-sweep analysis: statistics, frames, figures and the HTML/Markdown report.

Pure functions over pandas frames built from Optuna trials and MLflow runs, plus the
`python -m analysis.report` CLI. Deliberately free of training imports (no torch/transformers)
so a report can be built on any machine that can read the study storage.
"""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m analysis.<module>`: runpy imports this package before the module
    from sweeps.commands import refuse_non_commands

    refuse_non_commands(__name__)  # a library module run as a command says so instead of exiting 0 silently
