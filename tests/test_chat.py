"""`python -m sweeps.chat`: answers from a trial's adapter, and scoring the eval split through it
reproduces the metric the trial logged, exactly (the check LLaMA-Factory users make after export)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from sweep_helpers import REPO, TINY, env, only_study, run_sweep
from trainer.data.demo_data import generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _chat(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.chat", *args], cwd=cwd, env={**env(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


def _write(folder, name: str, rows: list[dict]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _metric(stdout: str, name: str) -> float:
    match = re.search(rf"^{name} = (\S+)$", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


def test_classification_chat_and_batch_scoring_reproduce_the_trial(tmp_path, tiny_bert_dir):
    data = tmp_path / "data"
    for split, (n, seed) in {"train": (48, 1), "validation": (24, 2)}.items():
        rows = generate(n, seed)
        _write(data, split, [{"text": t, "label": ["negative", "positive"][y]} for t, y in zip(rows["text"], rows["label"])])
    run_sweep(tmp_path, *[o for o in TINY if not o.startswith("data.max_")], f"model.name_or_path={tiny_bert_dir}",
              "data=jsonl", f"data.path={data}", "data.label_names=[negative,positive]", "hydra.sweeper.n_trials=1",
              "hydra.sweeper.pruner=none", "search_space=none", "train.learning_rate=choice(0.01)")
    trial = only_study(tmp_path).get_trials(states=(TrialState.COMPLETE,))[0]

    proc = _chat(tmp_path, "--trial", str(trial.number), "--prompt", "a wonderful film")
    assert proc.returncode == 0, proc.stderr[-3000:]
    label, *probs = proc.stdout.strip().splitlines()[-1].split()
    assert label in ("negative", "positive") and [p.split("=")[0] for p in probs] == ["negative", "positive"]
    assert sum(float(p.split("=")[1]) for p in probs) == pytest.approx(1.0, abs=1e-3)

    out = tmp_path / "preds.jsonl"  # without --trial: the winner (here the only trial), as export picks
    proc = _chat(tmp_path, "--input", str(data / "validation.jsonl"), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == 24 and all(p["label"] in ("negative", "positive") for p in preds)
    assert _metric(proc.stdout, "eval_accuracy") == trial.user_attrs["metrics"]["eval_accuracy"]
    assert _metric(proc.stdout, "eval_loss") == trial.user_attrs["metrics"]["eval_loss"]

    mixed = tmp_path / "mixed.jsonl"  # one output line per input line; bad rows become error records
    mixed.write_text("\n".join([json.dumps({"text": "a wonderful film", "label": "positive"}), "{oops",
                                 json.dumps({"text": 5, "label": "positive"}),
                                 json.dumps({"text": "dull", "label": "maybe"})]) + "\n")
    proc = _chat(tmp_path, "--input", str(mixed), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [1, 2, 3, 4] and rows[0]["label"] in ("negative", "positive")
    assert "JSON" in rows[1]["error"] and "'text'" in rows[2]["error"] and "maybe" in rows[3]["error"]
    assert "rows with errors: 3" in proc.stdout


def test_causal_lm_chat_answers_and_reproduces_the_logged_eval_loss(tmp_path, tiny_llama_dir):
    data = tmp_path / "data"
    for split, (n, seed) in {"train": (32, 3), "validation": (12, 4)}.items():
        rows = generate(n, seed)
        _write(data, split, [{"prompt": t, "completion": " " + ["negative", "positive"][y]}
                             for t, y in zip(rows["text"], rows["label"])])
    run_sweep(tmp_path, *[o for o in TINY if not o.startswith("data.max_")], f"model.name_or_path={tiny_llama_dir}",
              "task=causal_lm", "data=jsonl", f"data.path={data}", "data.text_column=prompt",
              "data.completion_column=completion", "data.label_column=null", "hydra.sweeper.n_trials=1",
              "hydra.sweeper.pruner=none", "search_space=none", "train.learning_rate=choice(0.01)")
    trial = only_study(tmp_path).get_trials(states=(TrialState.COMPLETE,))[0]

    proc = _chat(tmp_path, "--trial", str(trial.number), "--prompt", "a wonderful film", "--max-new-tokens", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "preds.jsonl"
    proc = _chat(tmp_path, "--trial", str(trial.number), "--input", str(data / "validation.jsonl"), "--output", str(out),
                 "--max-new-tokens", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == 12 and all({"prompt", "answer", "reference"} <= set(p) for p in preds)
    assert preds[0]["reference"] in ("negative", "positive")
    assert _metric(proc.stdout, "eval_loss") == trial.user_attrs["metrics"]["eval_loss"]
    assert 0.0 <= _metric(proc.stdout, "eval_exact_match") <= 1.0


def test_bad_flags_are_refused_before_loading(tmp_path):
    proc = _chat(tmp_path, "--model", str(tmp_path), "--prompt", "hi")
    assert proc.returncode == 2 and "--model" in proc.stderr and "config.yaml" in proc.stderr
    proc = _chat(tmp_path, "--trial", "0", "--input", str(tmp_path / "missing.jsonl"), "--output", "x.jsonl")
    assert proc.returncode == 2 and "--input" in proc.stderr
