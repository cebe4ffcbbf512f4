"""The learning-curve tables (bench/curves.py) grow by extension: a merged table keeps its rows and a
later `record --configs N` trains only the configs it does not hold yet."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CURVES = REPO / "bench" / "curves.py"


def curves(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(CURVES), *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def table_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for line in f]
    assert lines[0]["header"]["rows"] == len(lines) - 1
    return lines[1:]


def test_the_first_configs_of_a_longer_draw_are_the_same_configs():
    sys.path.insert(0, str(REPO / "bench"))
    from curves import draw_configs

    assert draw_configs("demo", 300)[:84] == draw_configs("demo", 84)
    assert draw_configs("sst2", 5) != draw_configs("demo", 5)  # each table its own draw


@pytest.mark.slow
def test_a_table_is_extended_without_re_running_its_rows(tmp_path):
    shard = tmp_path / "demo.shard0of1.jsonl"
    curves("record", "--table", "demo", "--configs", "2", "--smoke", "--out", str(shard))
    merged = Path(curves("merge", "--table", "demo", "--dir", str(tmp_path)).stdout.strip())
    first = table_rows(merged)
    assert [r["index"] for r in first] == [-1, 0, 1]  # the base config, then the drawn ones

    shard.unlink()  # the shard is merged: what remains is the table
    curves("record", "--table", "demo", "--configs", "3", "--smoke", "--out", str(shard))
    assert [json.loads(line)["index"] for line in shard.read_text().splitlines()] == [2]  # only the new config
    second = table_rows(Path(curves("merge", "--table", "demo", "--dir", str(tmp_path)).stdout.strip()))
    assert [r["index"] for r in second] == [-1, 0, 1, 2]
    assert second[:3] == first  # the rows already merged are kept as they were


def test_the_informed_start_up_configs_are_rows_a_replay_finds_exactly():
    """Informed start-up asks for fixed configs; a table that holds them answers each with itself,
    not with a neighbour (which the real sweeps showed can be two points off)."""
    sys.path.insert(0, str(REPO / "bench"))
    from curves import draw_configs, informed_configs, lookup_params, space_setup, spaces_of
    from replay import Table

    from sweeps.search.startup import informed_startup_params

    informed = informed_configs("demo")
    rows = [{"index": i, "params": p, "evals": [{"step": 1, "cpu_s": 1.0, "eval_accuracy": 0.5}], "total_steps": 1}
            for i, p in [*informed, *enumerate(draw_configs("demo", 40))]]
    table = Table("demo", "eval_accuracy", {}, rows)
    assert [i for i, _ in informed] == list(range(-2, -2 - len(informed), -1))
    for space_name in spaces_of("demo"):
        space, base, defaults = space_setup(space_name, "demo")
        asked = [lookup_params(p, defaults) for p in informed_startup_params(space, 10, base)]
        assert len({json.dumps(p, sort_keys=True) for p in asked}) >= 9  # the learning rate spread, not one config
        for params in asked:
            assert table.nearest(params)["params"] == params
