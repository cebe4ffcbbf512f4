"""The typed lora/quant/train settings: plain, frozen values from the composed config."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import compose_cfg

from trainer import ConfigError, validate_config
from trainer.settings import LoraSettings, QuantSettings, TrainSettings


def test_validate_config_returns_the_checked_groups_as_plain_values() -> None:
    lora, quant, train = validate_config(compose_cfg(["lora.target_modules=[query,value]", "lora.alpha_ratio=2",
                                                      "train.scheduler_kwargs={power: 2.0}"]))
    assert type(lora.target_modules) is list and lora.target_modules == ["query", "value"]
    assert type(train.scheduler_kwargs) is dict and train.scheduler_kwargs == {"power": 2.0}
    assert lora.alpha == 2 * lora.r and quant.mode == "4bit" and train.learning_rate == 3e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.learning_rate = 1.0  # type: ignore[misc]


def test_unknown_keys_are_ignored_and_known_ones_still_checked() -> None:
    validate_config(compose_cfg(["+lora.not_a_key=1", "+train.not_a_key=1", "+quant.not_a_key=1"]))
    with pytest.raises(ConfigError, match=r"train.batch_size: must be an integer >= 1, got 0"):
        TrainSettings.from_config(compose_cfg(["train.batch_size=0"]), QuantSettings())


def test_a_plain_group_dict_still_works_where_code_took_one() -> None:
    assert LoraSettings.of({"r": 8, "lora_alpha": 16, "unknown": 1}).alpha == 16.0
    assert QuantSettings.of({"mode": "none"}).prepare_kbit_training is True
    train = TrainSettings(batch_size=4)
    assert TrainSettings.of(train) is train
