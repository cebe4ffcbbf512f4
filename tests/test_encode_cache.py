"""The encode cache: the first process encodes and stores, every later one (another worker, a
later trial, a later sweep) reads the same result; anything the encoding depends on changes the
key; workers that start together encode once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose_cfg

from trainer.config import get
from trainer.data.splits import load_raw
from trainer.data.conversations import as_split, conversations_of
from trainer.data.encode_cache import ENV, cached_encode, encode_key
from trainer.data.encoding import encode
from trainer.models.loading import load_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def chat_inputs(model_dir: Path, *overrides: str):
    cfg = compose_cfg(["model=custom", f"model.name_or_path={model_dir}", "task=sft", "data=demo_chat",
                       "data.demo_train_size=30", "data.demo_eval_size=4", *overrides])
    task, data = get(cfg, "task"), get(cfg, "data")
    return load_raw(data, "sft"), load_tokenizer(get(cfg, "model"), task), data, task


def test_second_caller_reads_what_the_first_encoded(tiny_chat_llama_dir, tmp_path, caplog):
    raw, tok, data, task = chat_inputs(tiny_chat_llama_dir)
    caplog.set_level(logging.INFO, logger="trainer.data.encode_cache")
    first = cached_encode(raw, tok, data, task, 128, tmp_path)
    assert [p.suffix for p in tmp_path.iterdir() if p.suffix != ".lock"] == [".pkl"]
    assert "encoded data: wrote" in caplog.text and "encoded data: read" not in caplog.text
    caplog.clear()
    # a fresh process's view: tokenizer and rows loaded again
    raw2, tok2, data2, task2 = chat_inputs(tiny_chat_llama_dir)
    second = cached_encode(raw2, tok2, data2, task2, 128, tmp_path)
    assert "encoded data: read" in caplog.text and "encoded data: wrote" not in caplog.text
    plain = encode(raw, tok, data, task, 128)
    for got in (first, second):
        assert got.train.features == plain.train.features and got.eval.prompts == plain.eval.prompts
        assert got.eval.references == plain.eval.references and got.stats == plain.stats


def test_key_follows_rows_tokenizer_template_task_and_length(tiny_chat_llama_dir):
    raw, tok, data, task = chat_inputs(tiny_chat_llama_dir)
    key = encode_key(raw, tok, data, task, 128)
    assert encode_key(*chat_inputs(tiny_chat_llama_dir), 128) == key  # loaded again: same key
    encode(raw, tok, data, task, 128)
    tok("two words", truncation=True, max_length=8, padding="max_length")  # per-call state transformers keeps
    assert encode_key(raw, tok, data, task, 128) == key  # a tokenizer that has encoded: same key
    assert encode_key(raw, tok, data, task, 96) != key
    assert encode_key(raw, tok, data, {**task, "train_on": "last_assistant"}, 128) != key
    pairs = conversations_of(raw.train)
    first, tools = pairs[0]
    changed_rows = as_split([([{**m, "content": m["content"] + "!"} for m in first], tools), *pairs[1:]])
    assert encode_key(type(raw)(changed_rows, raw.eval, None, None), tok, data, task, 128) != key
    tok.chat_template = tok.chat_template.replace("<|im_end|>", "<|im_end|>\n\n")
    assert encode_key(raw, tok, data, task, 128) != key
    _, tok, _, _ = chat_inputs(tiny_chat_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>"]})
    assert encode_key(raw, tok, data, task, 128) != key


def test_off_switch_writes_nothing(tiny_chat_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    raw, tok, data, task = chat_inputs(tiny_chat_llama_dir)
    assert cached_encode(raw, tok, data, task, 128).train.features == encode(raw, tok, data, task, 128).train.features
    assert not any(tmp_path.iterdir())


WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
sys.path.insert(0, {tests!r})
from conftest import compose_cfg
from trainer.config import get
from trainer.data.splits import load_raw
from trainer.data.encode_cache import cached_encode
from trainer.models.loading import load_tokenizer
cfg = compose_cfg(["model=custom", "model.name_or_path={model}", "task=sft", "data=demo_chat",
                   "data.demo_train_size=300", "data.demo_eval_size=4"])
task, data = get(cfg, "task"), get(cfg, "data")
raw, tok = load_raw(data, "sft"), load_tokenizer(get(cfg, "model"), task)
print(len(cached_encode(raw, tok, data, task, 128, __import__("pathlib").Path({folder!r})).train.features))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workers_starting_together_encode_once(tiny_chat_llama_dir, tmp_path):
    script = WORKER.format(tests=str(REPO / "tests"), model=str(tiny_chat_llama_dir), folder=str(tmp_path / "cache"))
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=280) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("encoded data: wrote") == 1 and logs.count("encoded data: read") == 2
    assert len({out for out, _ in outs}) == 1
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == 1 and not list((tmp_path / "cache").glob("*.tmp"))


def test_trials_share_the_entry(tiny_chat_llama_dir, tmp_path, monkeypatch, caplog):
    """run_trial encodes through the cache: a second trial in a fresh process state (no warm
    cache) reads the entry the first wrote."""
    from trainer import WarmCache, run_trial

    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="trainer.data.encode_cache")
    cfg = compose_cfg(["model=custom", f"model.name_or_path={tiny_chat_llama_dir}", "task=sft", "data=demo_chat",
                       "data.demo_train_size=16", "data.demo_eval_size=2", "quant=none", "train.max_steps=1",
                       "train.max_seq_length=128", "task.max_new_tokens=1", "task.num_logged_samples=0",
                       "train.save_adapter=false"])
    first = run_trial(cfg, cache=WarmCache())
    assert caplog.text.count("encoded data: wrote") == 1
    second = run_trial(cfg, cache=WarmCache())
    assert caplog.text.count("encoded data: read") == 1
    assert first.metrics["eval_loss"] == second.metrics["eval_loss"]
