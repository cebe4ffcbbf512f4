"""Chat and instruction data for task=sft: every format loads, bad rows are named, the loss sees
exactly the assistant turns (two templates, multi-turn), long conversations are cut by turn and
then by the front of the prompt, never the answer (tests/test_chat_template_families.py has the
real templates of the model families)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import chat_tokenizer, compose_cfg
from sweep_helpers import run_sweep
from trainer.config import get
from trainer.data.conversations import DataRowError, conversations_of
from trainer.data.splits import load_raw
from trainer.data.encoding import IGNORE_INDEX, encode
from trainer.errors import ConfigError

CONVERSATION = [
    {"role": "system", "content": "reply with just the answer."},
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and that plus 4?"},
    {"role": "assistant", "content": "9"},
    {"role": "user", "content": "reverse the list: red blue"},
    {"role": "assistant", "content": "blue red"},
]
ROWS = {
    "messages": [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}],
    "sharegpt": [{"conversations": [{"from": "system", "value": "reply with just the answer."},
                                    {"from": "human", "value": "what is 2 plus 3?"}, {"from": "gpt", "value": "5"}]}],
    "alpaca": [{"instruction": "sort these numbers:", "input": "3 1 2", "output": "1 2 3"},
               {"instruction": "write 4 as a word.", "output": "four", "system": "reply with just the answer."}],
    "prompt_completion": [{"prompt": "what is 1 plus 1?", "completion": "2"}],
}
EXPECTED = {
    "messages": CONVERSATION,
    "sharegpt": CONVERSATION[:3],
    "alpaca": [{"role": "user", "content": "sort these numbers:\n\n3 1 2"}, {"role": "assistant", "content": "1 2 3"}],
    "prompt_completion": [{"role": "user", "content": "what is 1 plus 1?"}, {"role": "assistant", "content": "2"}],
}


def _write(folder: Path, rows: list[dict], eval_rows: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in (("train", rows), ("validation", eval_rows or rows)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def _data(folder: Path, fmt: str, **extra) -> dict:
    cfg = compose_cfg(["task=sft", "data=jsonl", f"data.path={folder}", f"data.format={fmt}",
                       *(f"data.{k}={v}" for k, v in extra.items())])
    return get(cfg, "data")


@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_loads_from_jsonl_as_messages(tmp_path, fmt):
    extra = {"text_column": "prompt", "completion_column": "completion"} if fmt == "prompt_completion" else {}
    raw = load_raw(_data(_write(tmp_path, ROWS[fmt]), fmt, **extra), "sft")
    assert len(raw.train) == len(ROWS[fmt])
    assert conversations_of(raw.train)[0] == (EXPECTED[fmt], None)
    if fmt == "alpaca":  # the optional system field becomes a system turn
        assert conversations_of(raw.train)[1][0][0] == {"role": "system", "content": "reply with just the answer."}


def test_column_names_are_configurable(tmp_path):
    rows = [{"chat": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    raw = load_raw(_data(_write(tmp_path, rows), "sharegpt", messages_column="chat"), "sft")
    assert conversations_of(raw.train)[0][0] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [{"q": "say hi", "a": "hi"}]
    cfg = compose_cfg(["task=sft", "data=jsonl", f"data.path={_write(tmp_path / 'b', rows)}", "data.format=alpaca",
                       "data.alpaca_columns.instruction=q", "data.alpaca_columns.output=a"])
    assert conversations_of(load_raw(get(cfg, "data"), "sft").train)[0][0][1]["content"] == "hi"


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD_ROWS = {  # case -> (format, bad row, field named, words in the message)
    "unknown role": ("messages", {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
                     "messages[0].role", "one of system, user, assistant"),
    "empty assistant turn": ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
                             "messages[1].content", "empty"),
    "no assistant turn": ("messages", {"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant turn"),
    "does not end with the assistant": ("messages", {"messages": [*GOOD["messages"], {"role": "user", "content": "more"}]},
                                        "messages[2]", "must end with an assistant turn"),
    "content of the wrong type": ("messages", {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]},
                                  "messages[0].content", "a string is required, got int"),
    "messages not a list": ("messages", {"messages": {"role": "user"}}, "messages", "non-empty list"),
    "sharegpt unknown speaker": ("sharegpt", {"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from",
                                 "human"),
    "alpaca missing output": ("alpaca", {"instruction": "do it"}, "output", "a string is required, got NoneType"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, case):
    fmt, bad, field, words = BAD_ROWS[case]
    good = GOOD if fmt == "messages" else ROWS[fmt][0]
    folder = _write(tmp_path, [good, good, bad], [good])
    with pytest.raises(DataRowError) as err:
        load_raw(_data(folder, fmt), "sft")
    message = str(err.value)
    assert str(folder / "train.jsonl") in message and "row 3" in message and repr(field) in message, message
    assert words in message, message


def test_a_bad_row_stops_the_sweep_before_any_trial(tmp_path, tiny_chat_llama_dir):
    folder = _write(tmp_path / "data", [GOOD, BAD_ROWS["unknown role"][1]], [GOOD])
    proc = run_sweep(tmp_path, f"model.name_or_path={tiny_chat_llama_dir}", "task=sft", "data=jsonl",
                     f"data.path={folder}", "search_space=llm", "quant=none", check=False, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{folder / 'train.jsonl'}: row 2: field 'messages[0].role'" in out, out[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna-journal.log").exists()


def _encode(tok_dir: Path, conversations: list[list[dict]], max_len: int = 256, **task_settings) -> tuple:
    """Both splits of `conversations` encoded as a trial would, and the tokenizer used."""
    import datasets

    from trainer.data.splits import RawData
    from trainer.models.loading import load_tokenizer

    cfg = compose_cfg(["task=sft", f"model.name_or_path={tok_dir}"])
    task = {**get(cfg, "task"), **task_settings}
    tok = load_tokenizer(get(cfg, "model"), task)
    ds = datasets.Dataset.from_dict({"messages": conversations})
    return encode(RawData(ds, ds, None, None), tok, {}, task, max_len), tok


def _trained_runs(feature: dict, tok) -> list[str]:
    """The decoded runs of consecutive tokens the loss sees."""
    runs, current = [], []
    for token, label in zip(feature["input_ids"], feature["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("template, end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_the_loss_sees_exactly_the_assistant_turns_and_their_end_of_turn(tmp_path, template, end):
    chat_tokenizer(tmp_path, template)
    data, tok = _encode(tmp_path, [CONVERSATION])
    assert _trained_runs(data.train.features[0], tok) == ["5" + end, "9" + end, "blue red" + end]
    # the generation prompt of the eval row is the whole history, ending where the last answer starts
    prompt = tok.decode(data.eval.prompts[0])
    assert prompt.endswith(tok.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)[-20:])
    assert "blue red" not in prompt and data.eval.references == ["blue red"]

    last, _ = _encode(tmp_path, [CONVERSATION], train_on="last_assistant")
    assert _trained_runs(last.train.features[0], tok) == ["blue red" + end]
    everything, _ = _encode(tmp_path, [CONVERSATION], train_on="all")
    assert all(label != IGNORE_INDEX for label in everything.train.features[0]["labels"])
    assert _trained_runs(everything.eval.features[0], tok) == ["5" + end, "9" + end, "blue red" + end]  # eval: assistant


def test_long_conversations_lose_whole_exchanges_from_the_front_or_are_dropped(tmp_path):
    chat_tokenizer(tmp_path)
    short = CONVERSATION[1:3]
    full, tok = _encode(tmp_path, [CONVERSATION, short])
    n_full, n_short = (len(f["input_ids"]) for f in full.train.features)
    budget = n_full - 1  # one token too many: the first exchange goes, the system turn stays
    cut, _ = _encode(tmp_path, [CONVERSATION, short], max_len=budget)
    assert _trained_runs(cut.train.features[0], tok) == ["9<|im_end|>", "blue red<|im_end|>"]
    assert tok.decode(cut.train.features[0]["input_ids"]).startswith("<|im_start|>system\nreply with just the answer.")
    assert cut.stats["train_rows_truncated"] == 1 and cut.stats["train_rows_dropped"] == 0
    dropped, _ = _encode(tmp_path, [CONVERSATION, short], max_len=budget, truncation="drop")
    assert len(dropped.train.features) == 1 and dropped.stats["train_rows_dropped"] == 1


def test_a_long_conversation_drops_the_fewest_exchanges_that_fit(tmp_path):
    chat_tokenizer(tmp_path)
    long = [CONVERSATION[0]] + [m for n in range(10) for m in (
        {"role": "user", "content": f"what is {n} plus 3?"}, {"role": "assistant", "content": str(n + 3)})]
    last_four = [long[0], *long[13:]]
    fits, tok = _encode(tmp_path, [last_four])
    cut, _ = _encode(tmp_path, [long], max_len=len(fits.train.features[0]["input_ids"]))
    assert cut.train.features[0]["input_ids"] == fits.train.features[0]["input_ids"]
    assert _trained_runs(cut.train.features[0], tok) == [f"{n + 3}<|im_end|>" for n in range(6, 10)]
    assert cut.stats["train_rows_truncated"] == 1


def test_an_exchange_too_long_for_the_limit_keeps_its_answer_and_loses_the_front_of_its_prompt(tmp_path):
    chat_tokenizer(tmp_path)
    long_question = [{"role": "system", "content": "reply with just the answer."},
                     {"role": "user", "content": "reverse the list: " + "red blue " * 30},
                     {"role": "assistant", "content": "blue red"}]
    whole, tok = _encode(tmp_path, [long_question])
    n = len(whole.train.features[0]["input_ids"])
    cut, _ = _encode(tmp_path, [long_question], max_len=n - 20)
    feature = cut.train.features[0]
    assert len(feature["input_ids"]) == n - 20 and cut.stats["train_rows_truncated"] == 1
    assert _trained_runs(feature, tok) == ["blue red<|im_end|>"]  # the answer is whole
    text = tok.decode(feature["input_ids"])
    assert text.endswith("<|im_start|>assistant\nblue red<|im_end|>\n")  # the end of the question stays
    assert not text.startswith("<|im_start|>system")  # the front of the prompt went
    assert tok.decode(cut.eval.prompts[0]).endswith("<|im_start|>assistant\n")
    # an answer that alone does not fit is not cut: the row is dropped, and with no row left the run stops
    with pytest.raises(ConfigError, match="train.max_seq_length"):
        _encode(tmp_path, [long_question], max_len=3)


def test_a_model_without_a_chat_template_needs_task_chat_template(tmp_path):
    chat_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for f in tmp_path.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ConfigError, match="task.chat_template.*no chat template"):
        _encode(tmp_path, [CONVERSATION])
    data, tok = _encode(tmp_path, [CONVERSATION], chat_template="zephyr")
    assert _trained_runs(data.train.features[0], tok)[-1] == "blue red</s>"


def test_a_template_that_rewrites_history_is_trained_on_its_one_real_rendering(tmp_path):
    chat_tokenizer(tmp_path)
    # renders only the last user turn: earlier turns change once later ones are added (refused before)
    rewriting = ("{% for m in messages %}{% if loop.last or m['role'] != 'user' %}{{ m['role'] }}: {{ m['content'] }}"
                 "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    data, tok = _encode(tmp_path, [CONVERSATION], chat_template=rewriting)
    assert [r.strip() for r in _trained_runs(data.train.features[0], tok)] == \
        ["5<|im_end|>", "9<|im_end|>", "blue red<|im_end|>"]


def test_a_template_whose_turns_cannot_be_located_is_refused_with_the_row_and_the_reason(tmp_path):
    chat_tokenizer(tmp_path)
    no_end_marker = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ConfigError) as err:
        _encode(tmp_path, [CONVERSATION], chat_template=no_end_marker)
    message = str(err.value)
    assert "task.chat_template=<the Jinja string given>" in message and "no special token" in message, message
    # an end marker that is plain text, not a special token of the tokenizer, is still found and trained
    plain_marker = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} END\n{% endfor %}"
    data, tok = _encode(tmp_path, [CONVERSATION], chat_template=plain_marker)
    assert [r.strip() for r in _trained_runs(data.train.features[0], tok)] == ["5 END", "9 END", "blue red END"]
    counting = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% if m['content'] | length > 3 %}"
                "!{% endif %}<|im_end|>\n{% endfor %}")  # renders a turn differently depending on its text
    with pytest.raises(ConfigError, match="train row 1 .*'what is 2 plus 3.*the template renders a turn differently"):
        _encode(tmp_path, [CONVERSATION], chat_template=counting)


def test_a_generation_metric_as_the_objective_is_measured_at_every_eval(tiny_chat_llama_dir, torch_single_thread):
    import trainer

    cfg = compose_cfg(["task=sft", "data=demo_chat", f"model.name_or_path={tiny_chat_llama_dir}", "quant=none",
                       "data.demo_train_size=16", "data.demo_eval_size=4", "train.max_steps=4",
                       "train.eval_every_steps=2", "train.batch_size=8", "train.max_seq_length=128",
                       "task.metric=exact_match", "task.direction=maximize", "task.max_new_tokens=2"])
    result = trainer.run_trial(cfg)
    evals = [h for h in result.history if h["event"] == "eval"]
    assert [h["step"] for h in evals] == [2, 4] and all("eval_exact_match" in h for h in evals)
    assert result.objective == result.metrics["eval_exact_match"]
    assert len(result.samples) == 4 and result.samples[0]["reference"]


def test_task_reasoning_is_checked_before_any_trial():
    from trainer.validation import validate_config

    cfg = compose_cfg(["task=sft", "data=demo_chat", "task.reasoning=think"])
    with pytest.raises(ConfigError, match="task.reasoning: must be null .* keep, strip, empty"):
        validate_config(cfg)
    validate_config(compose_cfg(["task=sft", "data=demo_chat", "task.reasoning=strip"]))


def test_a_stored_split_with_tools_trains_the_calls_and_not_the_results(tmp_path):
    """Through a datasets table (which fills absent keys with None) with a `tools` column."""
    import datasets

    from trainer.data.splits import RawData
    from trainer.models.loading import load_tokenizer

    chat_tokenizer(tmp_path)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    conversation = [
        {"role": "user", "content": "what is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "name": "get_weather"},
        {"role": "assistant", "content": "it is sunny in Paris."},
    ]
    tool_template = (  # chatml that renders tools, calls and tool turns
        "{% if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}{% for m in messages %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}{% for c in m.tool_calls or [] %}call {{ c.function.name }}"
        "({{ c.function.arguments | tojson }}){% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = compose_cfg(["task=sft", f"model.name_or_path={tmp_path}"])
    task = {**get(cfg, "task"), "chat_template": tool_template}
    tok = load_tokenizer(get(cfg, "model"), task)
    ds = datasets.Dataset.from_list([{"messages": conversation, "tools": tools}])
    data = encode(RawData(ds, ds, None, None), tok, {}, task, 256)
    feature = data.train.features[0]
    assert _trained_runs(feature, tok) == ['call get_weather({"city": "Paris"})<|im_end|>',
                                           "it is sunny in Paris.<|im_end|>"]
    assert '"name": "get_weather"' in tok.decode(feature["input_ids"]).split("<|im_start|>user")[0]
    assert data.eval.references == ["it is sunny in Paris."]
