"""The study side of a sweep: search space, sampler/pruner, workers, MLflow bookkeeping.

Kept import-light (no torch): Hydra imports the sweeper plugin, and so this package, at every start.
"""
