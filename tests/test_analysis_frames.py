"""Frames from real Optuna trials, replicate tables and the document renderers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.document import Bullets, Callout, Heading, Image, Paragraph, Table, fmt, to_html, to_markdown
from analysis.frames import complete, param_columns, reproduce_frame, trials_frame
from analysis.reproducibility import (determinism_check, environment_table, per_config_summary, replicates)

ENV = {"torch": "2.13.0", "cuda": "12.8", "device": "NVIDIA H100"}
DISTS = {"lora.r": CategoricalDistribution([4, 8]), "train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}


@pytest.fixture
def storage():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    study.add_trial(create_trial(
        params={"lora.r": 8, "train.learning_rate": 1e-3}, distributions=DISTS, values=[0.8, 1234],
        intermediate_values={5: 0.6, 10: 0.8},
        user_attrs={"mlflow_run_id": "run0", "trainable_params": 1234, "adapter_sha256": "abc",
                    "metrics": {"eval_accuracy": 0.8, "eval_loss": 0.4}, "note": "x", "nested": {"a": 1}}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lora.r": 4},
                                 distributions={"lora.r": DISTS["lora.r"]}, intermediate_values={5: 0.3}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "OOM", "retry_of": 1}))
    study.add_trial(create_trial(params={"lora.r": 4, "train.learning_rate": 2e-3}, distributions=DISTS,
                                 values=[0.7, 617], user_attrs={"metrics": {"eval_accuracy": 0.7}}))
    rep = optuna.create_study(storage=storage, study_name="s--reproduce", direction="maximize")
    for kind, seed, data_seed, value in [("both", 1, 1, 0.78), ("both", 2, 2, 0.76), ("both", 3, 3, 0.79),
                                         ("determinism", 0, 0, 0.8)]:
        metrics = {"eval_accuracy": value, "eval_loss": 0.4}
        rep.add_trial(create_trial(value=value, user_attrs={
            "replicates_trial": 0, "seed": seed, "data_seed": data_seed, "seed_kind": kind, "metrics": metrics,
            "environment": ENV, "deterministic_algorithms": kind == "determinism", "adapter_sha256": "abc"}))
    rep.add_trial(create_trial(value=0.69, user_attrs={"replicates_trial": 3, "seed": 1, "data_seed": 1,
                                                       "seed_kind": "both", "environment": ENV}))
    rep.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"replicates_trial": 3, "seed_kind": "seed"}))
    return storage


def test_trials_frame_columns(storage):
    frame = trials_frame(optuna.load_study(study_name="s", storage=storage))
    assert list(frame["state"]) == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert param_columns(frame) == ["param.lora.r", "param.train.learning_rate"]
    first = frame.iloc[0]
    assert (first["value"], first["value_1"], first["trainable_params"]) == (0.8, 1234, 1234)
    assert first["metric.eval_loss"] == 0.4 and first["attr.note"] == "x" and "attr.nested" not in frame.columns
    assert first["last_step"] == 10 and first["n_intermediate"] == 2
    assert frame.iloc[1]["last_intermediate"] == 0.3 and math.isnan(frame.iloc[1]["value"])
    assert frame.iloc[2]["fail_reason"] == "OOM" and frame.iloc[2]["retry_of"] == 1
    assert list(complete(frame)["number"]) == [0, 3]


def test_empty_study_frame():
    study = optuna.create_study()
    frame = trials_frame(study)
    assert frame.empty and {"number", "state", "value"} <= set(frame.columns) and complete(frame).empty


def test_reproduce_frame_and_tables(storage):
    search = trials_frame(optuna.load_study(study_name="s", storage=storage))
    assert reproduce_frame(storage, "nope") is None
    repro = reproduce_frame(storage, "s")
    assert len(repro) == 6 and repro.iloc[0]["env.device"] == "NVIDIA H100"
    reps = replicates(search, repro)
    assert len(reps) == 5 and set(reps["sweep_value"]) == {0.8, 0.7}

    table = per_config_summary(reps, maximize=True).set_index("config")
    assert table.loc[0, "n"] == 3                                 # determinism re-run excluded
    assert table.loc[0, "mean"] == pytest.approx((0.78 + 0.76 + 0.79) / 3)
    assert table.loc[0, "optimism"] == pytest.approx(0.8 - (0.78 + 0.76 + 0.79) / 3)
    assert table.loc[3, "n"] == 1 and math.isnan(table.loc[3, "std"])

    checks = determinism_check(search, repro)
    assert len(checks) == 1
    row = checks.iloc[0]
    assert row["metrics_identical"] and row["adapter_identical"] and row["max_abs_metric_diff"] == 0.0
    assert row["metrics_compared"] == 3                           # eval_accuracy, eval_loss, objective

    env = environment_table(repro)
    assert len(env) == 1 and env.iloc[0]["runs"] == 5 and env.iloc[0]["device"] == "NVIDIA H100"


def test_determinism_check_reports_differences(storage):
    search = trials_frame(optuna.load_study(study_name="s", storage=storage))
    repro = reproduce_frame(storage, "s")
    repro.loc[repro["seed_kind"] == "determinism", ["value", "metric.eval_accuracy", "adapter_sha256"]] = \
        [0.8005, 0.8005, "zzz"]
    row = determinism_check(search, repro).iloc[0]
    assert not row["metrics_identical"] and row["adapter_identical"] is not None and not row["adapter_identical"]
    assert row["max_abs_metric_diff"] == pytest.approx(0.0005)


def test_fmt():
    assert fmt(float("nan")) == "–" and fmt(None) == "–" and fmt(True) == "yes"
    assert fmt(0.123456) == "0.1235" and fmt(49152.0) == "49152" and fmt(3) == "3" and fmt(float("inf")) == "∞"


def test_renderers(tmp_path: Path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG fake")
    blocks = [Heading("Sec"), Paragraph("a **b** `c` <x>"), Callout("careful"), Bullets(("one",)),
              Table(pd.DataFrame({"a|b": [1.0, float("nan")]}), "cap"), Image(png, "Fig")]
    md = to_markdown("T", blocks)
    assert "## Sec" in md and "> **Warning:** careful" in md and "| a\\|b |" in md and "![Fig](f.png)" in md
    page = to_html("T", blocks)
    assert "<strong>b</strong>" in page and "<code>c</code>" in page and "&lt;x&gt;" in page
    assert 'src="data:image/png;base64,' in page and "f.png" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)


def test_fresh_replicates_leave_out_those_that_keep_a_tuned_seed():
    """Winner's curse: a data_seed replicate keeps the init seed the search picked for its luck."""
    from analysis.reproducibility import fresh

    reps = pd.DataFrame({"config": [1] * 4, "value": [0.9, 0.8, 0.7, 0.6], "sweep_value": [0.95] * 4,
                         "seed_kind": ["seed", "data_seed", "both", "determinism"]})
    # the trial's own seed values count as selected whether or not the search tuned them (issue 25)
    for tuned in (set(), {"seed"}, {"data_seed"}, {"seed", "data_seed"}):
        assert list(fresh(reps, tuned)["seed_kind"]) == ["both"]
    summary = per_config_summary(reps, maximize=True, tuned_seeds={"seed"})
    assert summary.loc[0, "n"] == 1 and summary.loc[0, "mean"] == pytest.approx(0.7)


def test_expected_max_draws_are_what_the_estimator_assumes():
    """Dodge et al.'s estimator assumes i.i.d. draws: pruned trials count at their last value, and
    with TPE only its random start-up trials are used."""
    import numpy as np

    from analysis.context import ReportData

    frame = pd.DataFrame({"number": range(14), "state": ["COMPLETE"] * 12 + ["PRUNED", "FAIL"],
                          "value": [0.5 + 0.01 * i for i in range(12)] + [np.nan, np.nan],
                          "last_intermediate": [np.nan] * 12 + [0.31, np.nan]})
    data = ReportData(study=None, attrs={"sampler": "tpe", "sampler_kwargs": {"n_startup_trials": 5}}, frame=frame,
                      done=frame[frame["state"] == "COMPLETE"], repro=None, reps=pd.DataFrame())
    values, label = data.expected_max_sample()
    assert list(values) == pytest.approx([0.50, 0.51, 0.52, 0.53, 0.54]) and "random start-up" in label
    data.attrs = {"sampler": "random"}
    values, label = data.expected_max_sample()
    assert len(values) == 13 and 0.31 in values and "i.i.d. draws, 1 pruned at their last reported value" in label
    data.attrs = {}
    values, label = data.expected_max_sample()
    assert len(values) == 13 and "not i.i.d." in label
