"""One LoRA/QLoRA fine-tune, independent of Optuna and MLflow.

Importing this package is cheap on purpose (the Hydra plugin scan imports it at every
startup): torch/transformers are only imported when an attribute that needs them is used.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Any

if sys.argv[:1] == ["-m"] and any(a == "trainer" or a.startswith("trainer.") for a in sys.orig_argv[1:]):
    # `python -m trainer[.<module>]` (runpy imports this package first): the trainer is a library
    # with no command, and a module run this way would import and exit 0 without a word.
    sys.stderr.write("python -m trainer: not a command (the trainer is a library); use `python sweep.py -m [overrides]` "
                     "(a sweep), `python sweep.py [overrides]` (one run) or `lora-sweep --help` (the tools around a sweep)\n")
    raise SystemExit(2)

from trainer.errors import ConfigError, NonFiniteLossError, TrialPreempted  # noqa: E402
from trainer.resolvers import register_resolvers  # noqa: E402

register_resolvers()

# On AVX512-BF16 CPUs, importing bitsandbytes tries to fetch a kernel for its packed 4-bit layout
# from the hub and warns that it failed. The trainer keeps the training layout instead
# (trainer.models.loading.keep_4bit_layout_on_cpu), so that kernel is never used and the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Offline (HF_HUB_OFFLINE=1), the `kernels` package notes at that same import that it skips the
# publisher check of that kernel: nothing a user can act on, printed by every process. Only that
# message is dropped; the logger's other warnings still show.
logging.getLogger("kernels._internals.hf_hub").addFilter(
    lambda record: not str(record.msg).startswith("Skipping publisher trust check for "))

# public name -> submodule defining it (imported on first access)
_LAZY = {
    "run_trial": "trainer.recipe",
    "TrialResult": "trainer.result",
    "Reporter": "trainer.reporting",
    "RecordingReporter": "trainer.reporting",
    "WarmCache": "trainer.cache",
    "validate_config": "trainer.validation",
    "preflight": "trainer.prechecks",
    "PreflightReport": "trainer.prechecks",
    "resolve_target_modules": "trainer.models.targets",
    "TARGET_PRESETS": "trainer.models.targets",
    "seed_everything": "trainer.seeding",
    "environment_fingerprint": "trainer.fingerprint",
    "determinism_mode": "trainer.seeding",
    "encode_conversation": "trainer.data.chat_templates",
}

__all__ = ["ConfigError", "NonFiniteLossError", "TrialPreempted", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        for public, owner in _LAZY.items():  # bind siblings too: one import per submodule
            if owner == _LAZY[name]:
                globals()[public] = getattr(module, public)
        return globals()[name]
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs only
    from trainer.cache import WarmCache
    from trainer.data.chat_templates import encode_conversation
    from trainer.fingerprint import environment_fingerprint
    from trainer.prechecks import PreflightReport, preflight
    from trainer.recipe import run_trial
    from trainer.reporting import RecordingReporter, Reporter
    from trainer.result import TrialResult
    from trainer.seeding import determinism_mode, seed_everything
    from trainer.models.targets import TARGET_PRESETS, resolve_target_modules
    from trainer.validation import validate_config
