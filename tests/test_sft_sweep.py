"""The LLM path end to end: a QLoRA sweep of a tiny chat Llama over data=demo_chat reports eval
loss at eval steps and generation metrics at the end, logs a sample-generations table on every
child run, and `python -m sweeps.chat` answers from a trial and reproduces its logged metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from sweep_helpers import REPO, env, only_study, run_sweep, runs
from trainer.data.demo_chat import demo_chat_splits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TRAIN, EVAL = 64, 8
SFT = ["task=sft", "data=demo_chat", f"data.demo_train_size={TRAIN}", f"data.demo_eval_size={EVAL}",
       "search_space=llm", "quant=4bit", "train.max_steps=6", "train.eval_every_steps=2", "train.log_every_steps=2",
       "train.batch_size=8", "train.max_seq_length=128", "task.max_new_tokens=4", "task.num_logged_samples=5",
       "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=none", "hydra.sweeper.reproduce.top_k=0"]


def _chat(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.chat", *args], cwd=cwd, env={**env(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


def _metric(stdout: str, name: str) -> float:
    match = re.search(rf"^{name} = (\S+)$", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


def test_qlora_sft_sweep_on_demo_chat_then_chat_with_a_trial(tmp_path, tiny_chat_llama_dir):
    run_sweep(tmp_path, f"model.name_or_path={tiny_chat_llama_dir}", *SFT)
    study = only_study(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert {"eval_loss", "eval_perplexity", "eval_exact_match", "eval_token_f1"} <= set(trial.user_attrs["metrics"])
        assert list(trial.intermediate_values) == [2, 4, 6]  # eval loss reported at every eval step

    client, _, children = runs(tmp_path)
    assert len(children) == 2
    for child in children:
        steps = lambda name: sorted({m.step for m in client.get_metric_history(child.info.run_id, name)})  # noqa: E731
        assert steps("eval_loss") == [2, 4, 6] and len(steps("eval_exact_match")) == 1  # at the kept eval
        assert child.data.params["task.type"] == "sft" and child.data.metrics["train_rows_dropped"] == 0
        # task=sft's `auto` defaults were resolved at the pre-flight: the run logs the numbers it trained with
        assert (child.data.params["train.precision"], child.data.params["train.gradient_checkpointing"],
                child.data.params["task.direction"]) == ("fp32", "False", "minimize")
        assert "eval_answers_capped" in child.data.metrics
        table_path = client.download_artifacts(child.info.run_id, "sample_generations.json", str(tmp_path / child.info.run_id))
        table = json.loads(open(table_path).read())
        assert table["columns"] == ["prompt", "reference_reasoning", "reference", "reasoning", "answer"] and len(table["data"]) == 5
        assert "<|im_start|>assistant" in table["data"][0][0]  # the prompt as the model saw it
        assert "sample_generations.json" in child.data.tags.get("mlflow.loggedArtifacts", "")

    best = study.best_trial
    proc = _chat(tmp_path, "--trial", str(best.number), "--prompt", "what is 2 plus 3?")
    assert proc.returncode == 0, proc.stderr[-3000:]

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"messages": m}) + "\n" for m in demo_chat_splits(TRAIN, EVAL)[1]))
    out = tmp_path / "preds.jsonl"
    proc = _chat(tmp_path, "--trial", str(best.number), "--input", str(eval_file), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == EVAL and all({"prompt", "reference", "answer"} <= set(p) for p in preds)
    logged = best.user_attrs["metrics"]
    for name in ("eval_loss", "eval_exact_match", "eval_token_f1"):
        assert _metric(proc.stdout, name) == logged[name], name
