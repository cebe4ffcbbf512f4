"""Seeding and determinism switches.

Why each switch:
- `random`, `numpy`, `torch` (CPU and all CUDA devices) RNGs are seeded so LoRA init, head
  init and dropout masks are a function of the seed alone.
- `torch.use_deterministic_algorithms(True)`: on CPU every op we use has a deterministic
  kernel, so we make non-determinism an error; on CUDA some kernels (e.g. scatter-add in
  backward) have none, so we only warn there instead of failing the trial.
- cuDNN: `deterministic=True, benchmark=False` stops autotuning from picking different kernels.
- `CUBLAS_WORKSPACE_CONFIG=:4096:8` is required by cuBLAS for deterministic GEMMs on CUDA >= 10.2;
  it only takes effect if set before the first cuBLAS call, so we set it as early as we can.
"""

from __future__ import annotations

import os
import random


def seed_everything(seed: int) -> None:
    """Seed every global RNG and switch torch to deterministic algorithms (see module doc)."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.use_deterministic_algorithms(True, warn_only=determinism_policy() == "warn_only")
    # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
    # memory. Our ops never read it, so this debugging aid only costs time (bench table 1 measures
    # how much); PyTorch documents turning it off as still deterministic.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def determinism_policy() -> str:
    """The mode seed_everything enforces on this machine, known before any trial (the environment
    fingerprint logs it with every run): `strict` on CPU, `warn_only` where CUDA is available."""
    import torch

    return "warn_only" if torch.cuda.is_available() else "strict"


def determinism_mode() -> str:
    """What torch enforces now: `strict` (a non-deterministic op raises), `warn_only` (it only
    warns, so two runs may differ; on CUDA some kernels we use have no deterministic version) or
    `off`."""
    import torch

    if not torch.are_deterministic_algorithms_enabled():
        return "off"
    return "warn_only" if torch.is_deterministic_algorithms_warn_only_enabled() else "strict"
