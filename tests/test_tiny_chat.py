"""`model=tiny_chat`: the offline chat model is built on first use, the same bytes on every build,
once when several processes ask at the same time, with the chatml template and special tokens;
and the README's offline LLM demo runs end to end and `lora-sweep chat` answers from its winner."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from sweep_helpers import REPO, env

SFT_DEMO = ["model=tiny_chat", "task=sft", "data=demo_chat", "search_space=llm"]

# A child process that imports what a build needs, waits until `n` children are ready, then asks
# for the model's folder and loads it, as a sweep worker does (argv: barrier folder, n).
BUILD_AT = """
import os, sys, time
from pathlib import Path
import torch, transformers
from trainer.models.tiny_chat import tiny_chat_path
barrier, n = Path(sys.argv[1]), int(sys.argv[2])
barrier.mkdir(parents=True, exist_ok=True)
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.01)
path = tiny_chat_path()
transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModelForCausalLM.from_pretrained(path)
print(path)
"""


def _child_env(cache: Path) -> dict[str, str]:
    return {**env(), "PYTHONPATH": str(REPO), "LORA_SWEEP_CACHE": str(cache)}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_two_builds_are_byte_identical_and_the_config_points_at_the_build(tmp_path, monkeypatch, torch_single_thread):
    """Seeded tokenizer training and init: a fresh interpreter and this one write the same files."""
    from trainer.models.tiny_chat import recipe_version, tiny_chat_path

    other = subprocess.run([sys.executable, "-c", BUILD_AT, str(tmp_path / "barrier"), "1"], env=_child_env(tmp_path / "a"),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-3000:]
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "b"))
    first, second = Path(other.stdout.strip()), Path(tiny_chat_path())
    assert first.parent == tmp_path / "a" and first.name == second.name == f"tiny_chat-{recipe_version()}"
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(_hashes(first))
    assert _hashes(first) == _hashes(second)

    cfg = compose_cfg(SFT_DEMO)
    assert OmegaConf.to_container(cfg.model, resolve=True)["name_or_path"] == str(second)  # ${tiny_chat:}: reused


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    from trainer.models.tiny_chat import cache_root

    monkeypatch.delenv("LORA_SWEEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lora-sweep"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "lora-sweep"
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_two_processes_asking_at_once_get_one_complete_folder(tmp_path):
    from trainer.models.tiny_chat import recipe_version

    """Sweep workers start together: one builds, the other waits and reuses; no temp folder is left."""
    cache = tmp_path / "cache"
    stale = cache / f".tiny_chat-{recipe_version()}.x1y2"
    (stale / "model.safetensors").parent.mkdir(parents=True)  # a build killed half-way, earlier
    (stale / "model.safetensors").write_bytes(b"partial")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_AT, str(tmp_path / "barrier"), "2"], env=_child_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    built = Path(paths.pop())
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [built.name]  # no temp folder left, the stale one gone
    assert json.loads((built / "config.json").read_text())["model_type"] == "qwen2"


def test_chatml_template_and_special_tokens_as_the_trainer_sees_them(tmp_path, monkeypatch):
    """`<|im_end|>` is one token, the eos and the end of every trained assistant span; prompts end
    with the generation prompt the model answers after."""
    import trainer  # noqa: F401  - registers the resolvers
    from trainer.data.chat_templates import end_of_turn_id
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode
    from trainer.models.loading import load_tokenizer

    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path))
    cfg = OmegaConf.to_container(compose_cfg([*SFT_DEMO, "train.max_seq_length=256"]), resolve=True)
    tok = load_tokenizer(cfg["model"], cfg["task"])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [im_end]
    assert tok("<|im_start|>", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|im_start|>")]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and end_of_turn_id(tok) == im_end
    messages = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nbe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n")
    assert tok.decode(tok("What is 2 + 3? 17 Blue", add_special_tokens=False)["input_ids"]) == "What is 2 + 3? 17 Blue"

    data = encode(load_raw(cfg["data"], "sft"), tok, cfg["data"], cfg["task"], cfg["train"]["max_seq_length"])
    assert data.stats["train_rows_truncated"] == 0
    for row in data.train.features:
        labels = row["labels"]
        ends = [i for i, label in enumerate(labels) if label != -100 and (i + 1 == len(labels) or labels[i + 1] == -100)]
        assert ends and all(labels[i] == im_end for i in ends)  # every trained span ends with <|im_end|>
    assert all(tok.decode(p).endswith("<|im_start|>assistant\n") for p in data.eval.prompts)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_demo_runs_offline_and_its_winner_answers(tmp_path):
    """The README's command, as typed, from an empty directory with an empty cache."""
    run_env = _child_env(tmp_path / "cache")
    sweep = subprocess.run([sys.executable, str(REPO / "sweep.py"), "-m", *SFT_DEMO], cwd=tmp_path, env=run_env,
                           capture_output=True, text=True, timeout=540)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    table = sweep.stdout[sweep.stdout.index("Top trials"):]
    assert "eval_loss" in table and "eval_exact_match" in table, sweep.stdout[-3000:]
    chat = subprocess.run([sys.executable, "-m", "sweeps.chat", "--prompt", "What is 2 + 3?"], cwd=tmp_path,
                          env=run_env, capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.strip(), chat.stderr[-3000:]


def test_the_top_trials_table_names_the_objective_and_shows_exact_match_beside_a_loss():
    """A loss says nothing of the answers: an SFT sweep's table shows eval_exact_match beside it,
    and in a log file (200 columns) still every run id whole."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from rich.console import Console

    from sweeps.progress import top_trials_table

    study = optuna.create_study(direction="minimize")
    study.set_user_attr("objectives", ["eval_loss"])
    space = {"lora.r": CategoricalDistribution([8, 16, 32, 64]), "lora.alpha_ratio": CategoricalDistribution([1, 2]),
             "lora.lora_dropout": FloatDistribution(0, 0.1), "lora.target_modules": CategoricalDistribution(["attn", "all_linear"]),
             "train.learning_rate": FloatDistribution(1e-4, 5e-4, log=True), "seed": CategoricalDistribution([0, 1, 2, 3]),
             "train.lr_scheduler_type": CategoricalDistribution(["cosine", "linear", "constant_with_warmup"]),
             "train.warmup_ratio": FloatDistribution(0.03, 0.1)}
    for loss, exact in ((2.8727, 0.05), (3.3348, 0.0)):
        params = {"lora.r": 32, "lora.alpha_ratio": 2, "lora.lora_dropout": 0.0556, "lora.target_modules": "all_linear",
                  "train.learning_rate": 4.34e-4, "seed": 3, "train.lr_scheduler_type": "constant_with_warmup",
                  "train.warmup_ratio": 0.099}
        study.add_trial(optuna.trial.create_trial(value=loss, params=params, distributions=space, user_attrs={
            "metrics": {"eval_loss": loss, "eval_exact_match": exact}, "trainable_params": 311296,
            "mlflow_run_id": f"{int(exact * 100):032d}"}))
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(top_trials_table(study))
    text = console.export_text()
    header = next(line for line in text.splitlines() if line.startswith("┃ #"))
    assert [h.strip() for h in header.split("┃")[2:4]] == ["eval_loss", "eval_exact_match"]
    row = next(line for line in text.splitlines() if line.startswith("│ 0 "))
    assert [c.strip() for c in row.split("│")[2:4]] == ["2.8727", "0.05"] and f"{5:032d}" in row

    study.set_user_attr("objectives", ["eval_exact_match"])  # the objective already: not twice
    console.print(top_trials_table(study))
    assert console.export_text().count("eval_exact_match") == 1
