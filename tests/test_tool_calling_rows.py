"""Tool-calling rows from files, end to end: `messages` rows (a `tools` column, assistant
`tool_calls` with and without text, role `tool`) and LLaMA-Factory sharegpt rows (`function_call`,
`observation`, top-level `system` and `tools`) load, encode through Qwen2.5's real template with the
calls in the loss and the tool results out of it, and train a tiny Qwen2 model in a real trial."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import compose_cfg
from trainer.config import get
from trainer.data.splits import load_raw
from trainer.data.encoding import IGNORE_INDEX, encode

TEMPLATE = Path(__file__).parent / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

MESSAGES_ROW = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "reply briefly."},
    {"role": "user", "content": "what is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call1"},
    {"role": "assistant", "content": "it is sunny in Paris."},
    {"role": "user", "content": "and in Rome?"},
    {"role": "assistant", "content": "checking Rome.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "content": "rainy"},
    {"role": "assistant", "content": "it is rainy in Rome."},
]}
SHAREGPT_ROW = {"system": "reply briefly.", "tools": json.dumps([TOOLS[0]["function"]]), "conversations": [
    {"from": "human", "value": "what is the weather in Oslo?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
    {"from": "observation", "value": "snowy"},
    {"from": "gpt", "value": "it is snowy in Oslo."},
]}
CALL = '<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{}"}}}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 with a byte-level BPE learnt from the rows and Qwen2.5's real template."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny_qwen_tools")
    corpus = [json.dumps(MESSAGES_ROW), json.dumps(SHAREGPT_ROW), TEMPLATE.read_text()] * 4
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", additional_special_tokens=SPECIALS)
    fast.chat_template = TEMPLATE.read_text()
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def _files(folder: Path, fmt: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    row = MESSAGES_ROW if fmt == "messages" else SHAREGPT_ROW
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    return ["task=sft", "data=jsonl", f"data.path={folder}", f"data.format={fmt}", "data.test_split=null"]


def _trained_runs(feature: dict, tok) -> list[str]:
    runs, current = [], []
    for token, label in zip(feature["input_ids"], feature["labels"]):
        if label == IGNORE_INDEX:
            if current:
                runs.append(tok.decode(current))
            current = []
        else:
            current.append(token)
    return runs + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("fmt, expected", [
    ("messages", [CALL.format("Paris") + "<|im_end|>", "it is sunny in Paris.<|im_end|>",
                  "checking Rome.\n" + CALL.format("Rome") + "<|im_end|>", "it is rainy in Rome.<|im_end|>"]),
    ("sharegpt", [CALL.format("Oslo") + "<|im_end|>", "it is snowy in Oslo.<|im_end|>"]),
])
def test_tool_rows_from_a_file_train_the_calls_and_not_the_results(tmp_path, qwen_dir, fmt, expected):
    from transformers import AutoTokenizer

    cfg = compose_cfg([*_files(tmp_path / "data", fmt), f"model.name_or_path={qwen_dir}"])
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    encoded = encode(load_raw(get(cfg, "data"), "sft"), tok, get(cfg, "data"), get(cfg, "task"), 1024)
    feature = encoded.train.features[0]
    text = tok.decode(feature["input_ids"])
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # the tool schemas reach the prompt
    assert ("sunny" if fmt == "messages" else "snowy") in text  # the tool result is in the prompt ...
    assert _trained_runs(feature, tok) == expected  # ... and only the calls and answers are in the loss


def test_a_trial_trains_on_tool_rows(tmp_path, qwen_dir, torch_single_thread):
    import trainer

    cfg = compose_cfg([*_files(tmp_path / "data", "messages"), f"model.name_or_path={qwen_dir}", "quant=none",
                       "train.max_steps=6", "train.eval_every_steps=3", "train.log_every_steps=1", "train.batch_size=1",
                       "train.max_seq_length=1024", "train.learning_rate=0.01", "task.max_new_tokens=4"])
    result = trainer.run_trial(cfg)
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    assert losses and losses[-1] < losses[0]  # the loss on the calls and answers goes down
    assert math.isfinite(result.metrics["eval_loss"])
