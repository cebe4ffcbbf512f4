"""The documented presets compose into the settings they promise (`+preset=race` turns the seed
race on), so the README's one-word way to get a checked winner keeps working."""

from __future__ import annotations

import subprocess
import sys

import yaml

from sweep_helpers import REPO, env


def _hydra_node(*overrides: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "sweep.py"), *overrides, "--cfg", "hydra"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300, check=True)
    return yaml.safe_load(proc.stdout)["hydra"]


def test_race_preset_turns_the_race_on_and_changes_nothing_else():
    plain, raced = _hydra_node(), _hydra_node("+preset=race")
    assert plain["sweeper"]["race"]["enabled"] is False
    assert raced["sweeper"]["race"] == {"enabled": True, "top_k": 3, "max_runs": 24, "alpha": 0.05,
                                        "search_seeds": False}  # the seeds leave the search space
    for node in (plain, raced):
        node["sweeper"].pop("race")
        node.pop("overrides", None)
        node.pop("runtime", None)
        node.pop("job", None)
    assert raced["sweeper"] == plain["sweeper"]
