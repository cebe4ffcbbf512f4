"""The replay benchmark (bench/replay.py) against a table the real trainer records on the spot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_nearest_tabulated_config_is_the_config_itself_when_tabulated():
    sys.path.insert(0, str(REPO / "bench"))
    from replay import Table

    rows = [{"index": i, "params": p, "evals": [{"step": 1, "wall_s": 1.0, "eval_accuracy": a}], "total_steps": 1}
            for i, (p, a) in enumerate([
                ({"lora.r": 8, "lora.lora_alpha": 16, "lora.lora_dropout": 0.05, "lora.target_modules": "qv",
                  "train.learning_rate": 3e-3, "train.lr_scheduler_type": "linear", "seed": 0}, 0.8),
                ({"lora.r": 8, "lora.lora_alpha": 16, "lora.lora_dropout": 0.05, "lora.target_modules": "qv",
                  "train.learning_rate": 3e-2, "train.lr_scheduler_type": "linear", "seed": 0}, 0.5),
                ({"lora.r": 32, "lora.lora_alpha": 8, "lora.lora_dropout": 0.0, "lora.target_modules": "all_linear",
                  "train.learning_rate": 3e-3, "train.lr_scheduler_type": "cosine", "seed": 1}, 0.7)])]
    table = Table("demo", "eval_accuracy", {}, rows)
    for row in rows:
        assert table.nearest(row["params"])["index"] == row["index"]
    # the learning rate moves the lookup: 2e-2 is nearer 3e-2 than 3e-3
    assert table.nearest({**rows[0]["params"], "train.learning_rate": 2e-2})["index"] == 1
    assert table.best("best") == 0.8


@pytest.mark.slow
def test_replay_smoke_runs_every_arm_on_a_table_the_trainer_just_recorded(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "replay.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "replay.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## demo: 5 tabulated configs" in text  # 4 drawn + the base config (row -1)
    for arm in ("HF hyperparameter_search", "random, no pruner", "old product default", "+ prior-centred space",
                "+ conformal pruner", "+ informed start-up", "+ seed out of the space"):
        assert f"| {arm}" in text
    assert "compute to 1 pt" in text and "Ratio of median compute, arm / HF" in text
