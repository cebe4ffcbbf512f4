"""`python sweep.py -m` end to end on tiny random models with 4-bit quantization: the study, the
MLflow parent/child runs, pruning, resume, single runs, and bad input rejected before any trial."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, mlflow_client, only_study, run_sweep, runs

pytestmark = pytest.mark.timeout(900)


def _model(path: Path) -> str:
    return f"model.name_or_path={path}"


def test_four_trial_sweep_then_resume(tmp_path, tiny_bert_dir):
    args = [*TINY, _model(tiny_bert_dir), "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=none"]
    out = run_sweep(tmp_path, *args).stdout
    study = only_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert "Top trials" in out
    # the config the sweep was started from (the defaults + overrides) is trial 0, and the summary compares with it
    base = study.trials[0]
    assert base.user_attrs["base"] is True
    assert base.params == {"lora.r": 8, "lora.lora_dropout": 0.05, "lora.target_modules": "qv",
                           "train.learning_rate": 3e-3, "train.lr_scheduler_type": "linear", "seed": 0}
    assert "base config" in out and ("vs the base config #0" in out or "is the best trial" in out)

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    # stdout is not a terminal here: a line per finished trial instead of a bar that prints at the end
    for trial in study.trials:
        assert re.search(rf"trial #{trial.number} COMPLETE value {trial.value:.4f} · best \S+ \(#\d+\) · \d+/4 done", out), out
    # the link to the runs table in MLflow's model-training view, and the experiment tagged as such
    experiment_id = parent.info.experiment_id
    assert f"MLflow runs: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in out
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"report: lora-sweep report --study {study.study_name}\n" in out  # the command that writes the report
    assert parent.info.status == "FINISHED"
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.trial_number"] == str(study.best_trial.number)
    assert parent.data.metrics["base_value"] == base.value and parent.data.tags["base.trial_number"] == "0"
    assert parent.data.metrics["gain_over_base"] == pytest.approx(study.best_value - base.value)

    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.run_id in out  # the top-trials table shows run ids
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        # flattened resolved config as params, the sampled values among them
        assert run.data.params["lora.r"] == str(trial.params["lora.r"])
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(trial.params["train.learning_rate"])
        assert run.data.params["quant.mode"] == "4bit"
        for key in ("eval_accuracy", "eval_macro_f1", "trainable_params", "train_runtime_s", "samples_per_second",
                    "peak_memory_mb", "train_padding_fraction"):
            assert key in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "eval_accuracy")) >= 3  # steps 2, 4, 6
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 3
        assert run.data.tags["env.torch"] and run.data.tags["env.device"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "curves.png", "adapter"} <= artifacts
        assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}

    # Rerunning the same command resumes: n_trials is the total, only missing trials run (and are announced).
    out = run_sweep(tmp_path, *args[:-2], "hydra.sweeper.n_trials=5", "hydra.sweeper.pruner=none").stdout
    assert re.findall(r"trial #(\d+) \w+ value", out) == ["4"], out
    study = only_study(tmp_path)
    assert len(study.trials) == 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 5  # same parent, reattached
    run_sweep(tmp_path, *args[:-2], "hydra.sweeper.n_trials=5", "hydra.sweeper.pruner=none")
    assert len(only_study(tmp_path).trials) == 5
    assert sum(bool(t.user_attrs.get("base")) for t in only_study(tmp_path).trials) == 1  # enqueued once per study


def test_pruner_prunes_and_mlflow_shows_it(tmp_path, tiny_bert_dir):
    run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "task.metric=loss", "task.direction=minimize",
              "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=percentile",
              "hydra.sweeper.pruner_kwargs={percentile: 1.0, n_startup_trials: 1, n_warmup_steps: 0}",
              "hydra.sweeper.prune_after=0", "hydra.sweeper.prune_min_trials=1",
              "train.learning_rate=tag(log, interval(1e-4, 0.3))")
    study = only_study(tmp_path)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    _, _, children = runs(tmp_path)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in pruned:
        run = by_number[trial.number]
        assert run.info.status == "KILLED" and run.data.tags["pruned"] == "true"
        assert trial.intermediate_values  # it reported before being stopped


def test_causal_lm_sweep(tmp_path, tiny_llama_dir):
    run_sweep(tmp_path, *TINY, _model(tiny_llama_dir), "task=causal_lm", "hydra.sweeper.n_trials=2",
              "lora.target_modules=choice(qv, all_linear)")
    study = only_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial in study.trials:
        assert {"eval_loss", "eval_perplexity", "eval_accuracy"} <= set(trial.user_attrs["metrics"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def test_unknown_target_module_rejected_before_any_trial(tmp_path, tiny_bert_dir):
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "lora.target_modules=[nonexistent]",
                     "search_space=none", "lora.r=4,8", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "nonexistent" in text and "query" in text and "lora.target_modules" in text
    assert not (tmp_path / "optuna-journal.log").exists() and not (tmp_path / "mlflow.db").exists()


def test_rejected_run_leaves_existing_stores_untouched(tmp_path, tiny_bert_dir):
    good = [*TINY, _model(tiny_bert_dir), "hydra.sweeper.n_trials=1"]
    run_sweep(tmp_path, *good)
    before = {name: _digest(tmp_path / name) for name in ("optuna-journal.log", "mlflow.db")}
    proc = run_sweep(tmp_path, *good, "lora.r=0,4", check=False)
    assert proc.returncode != 0 and "lora.r" in proc.stdout + proc.stderr
    assert {name: _digest(tmp_path / name) for name in before} == before
    assert len(only_study(tmp_path).trials) == 1


def _jsonl(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("override, key, fragment", [
    ("lora.r=0,4", "lora.r", "0"),
    ("lora.lora_alpha=-1", "lora.lora_alpha", "-1"),
    ("lora.lora_dropout=1.0", "lora.lora_dropout", "[0, 1)"),
    ("train.lr_scheduler_type=warp_speed", "train.lr_scheduler_type", "cosine_with_restarts"),
    ("train.learning_rate=0", "train.learning_rate", "> 0"),
    ("hydra.sweeper.sampler=bogus", "hydra.sweeper.sampler", "tpe"),
    ("hydra.sweeper.pruner=bogus", "hydra.sweeper.pruner", "hyperband"),
    ("hydra.sweeper.timeout=0", "hydra.sweeper.timeout", "> 0 seconds or null"),
    ("search_space=none", "hydra.sweeper.params", "empty"),
    ("data.text_column=review", "data.text_column", "text"),
])
def test_bad_input_names_the_key(tmp_path, tiny_bert_dir, override, key, fragment):
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), override, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in text and fragment in text, text[-3000:]
    assert not (tmp_path / "optuna-journal.log").exists() and not (tmp_path / "mlflow.db").exists()


def test_labels_outside_the_class_range_are_rejected(tmp_path, tiny_bert_dir):
    data = _jsonl(tmp_path / "data", [{"text": f"row {i}", "label": i % 3} for i in range(12)])
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "data=jsonl", f"data.path={data}",
                     "data.num_labels=2", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "label" in text and "2" in text
    assert not (tmp_path / "optuna-journal.log").exists()


def test_bf16_rejected_on_a_device_without_it(tmp_path, tiny_bert_dir):
    from trainer.devices import resolve_device, supported_precisions

    if "bf16" in supported_precisions(resolve_device("cpu")):
        pytest.skip("this CPU has native bf16")
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "train.precision=bf16", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train.precision" in text and "fp32" in text


def test_single_run_without_multirun(tmp_path, tiny_bert_dir):
    run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), multirun=False)
    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("lora-sweep")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and "eval_accuracy" in run.data.metrics
    assert 0.0 <= run.data.metrics["train_padding_fraction"] < 1.0
    assert run.data.params["lora.r"] == "8"
    assert {"config.yaml", "curves.png", "adapter"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
