"""What to try and where it is kept: the search space, samplers and pruners, the study and its trial budget, the Optuna storage (every URL rule once)."""
