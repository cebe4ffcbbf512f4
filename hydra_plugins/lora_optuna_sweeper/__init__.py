"""Hydra discovers sweepers under the `hydra_plugins` namespace; the code lives in `sweeps/`."""
