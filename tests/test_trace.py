"""The opt-in trace (`LORA_SWEEP_TRACE`): a real sweep says where each trial's time went, from
its own processes; without the variable nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

from sweep_helpers import TINY, run_sweep

from trainer import trace


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spans_nest_and_nothing_is_written_when_off(tmp_path, monkeypatch):
    out = tmp_path / "trace.jsonl"
    monkeypatch.delenv(trace.TRACE_ENV, raising=False)
    with trace.span("outer"):
        pass
    assert not out.exists() and list(tmp_path.iterdir()) == []

    monkeypatch.setenv(trace.TRACE_ENV, str(out))

    @trace.traced("inner")
    def inner() -> int:
        return 7

    with trace.span("outer", trial=3):
        assert inner() == 7
    trace.mark("since start")
    first, second, third = _lines(out)
    assert (first["phase"], second["phase"], third["phase"]) == ("inner", "outer", "since start")
    assert second["start"] <= first["start"] <= first["end"] <= second["end"]
    assert first["parent"] == second["id"] and second["parent"] is None and second["trial"] == 3
    assert third["start"] < second["start"]  # the process started before the first span


def test_a_traced_sweep_shows_each_trial_and_its_phases(tmp_path, monkeypatch, tiny_bert_dir):
    out = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(out))
    run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=1",
              "hydra.sweeper.n_trials=2", "hydra.sweeper.include_base=false", "hydra.sweeper.race.enabled=true",
              "hydra.sweeper.race.top_k=2", "hydra.sweeper.race.max_runs=4")
    spans = _lines(out)
    (startup,) = [s for s in spans if s["phase"] == "sweep.startup"]  # once, though the race starts workers again
    sweep_pid = startup["pid"]
    assert len([s for s in spans if s["phase"] == "sweep.spawn_workers"]) >= 2  # the search's, then one per race round
    search_worker = min((s for s in spans if s["phase"] == "worker.startup"), key=lambda s: s["start"])["pid"]
    trials = [s for s in spans if s["phase"] == "worker.trial" and s["pid"] == search_worker]
    assert sorted(s["trial"] for s in trials) == [0, 1]
    assert sweep_pid != search_worker
    assert {"sweep.preflight", "sweep.spawn_workers", "mlflow.open_store", "mlflow.open_parent"} <= {
        s["phase"] for s in spans if s["pid"] == sweep_pid}

    def within(trial: dict) -> list[str]:
        return [s["phase"] for s in spans if s["pid"] == trial["pid"] and s is not trial
                and trial["start"] <= s["start"] and s["end"] <= trial["end"]]

    first, second = sorted(trials, key=lambda s: s["start"])
    for t in (first, second):
        phases = within(t)
        assert {"trainer.run_trial", "trainer.train", "trainer.lora_setup", "worker.sample_params",
                "sweep.compose", "worker.adapter_sha256"} <= set(phases), phases
        assert phases.count("trainer.eval") >= 3  # max_steps 6, eval every 2 steps
        assert phases.count("worker.report") == phases.count("trainer.eval")
    # the warm worker loads the base model once: in its first trial, not its second
    assert "trainer.model_load" in within(first) and "trainer.model_load" not in within(second)
    assert any(s["phase"] == "worker.startup" and s["end"] <= first["start"] for s in spans)
