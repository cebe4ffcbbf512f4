"""Post-sweep analysis: statistics, frames, figures and the HTML/Markdown report.

Pure functions over pandas frames built from Optuna trials and MLflow runs, plus the
`python -m analysis.report` CLI. Deliberately free of training imports (no torch/transformers)
so a report can be built on any machine that can read the study storage.
"""
