"""Chat data in every format loads to the exact OpenAI-shape conversation (tools, tool calls, tool
results, reasoning, system prompts, history, content parts), no key of a row is dropped silently,
and the stored splits give back exactly what was loaded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import compose_cfg
from sweep_helpers import run_sweep
from trainer.config import get
from trainer.data.conversations import DataRowError, as_split, conversations_of
from trainer.data.splits import load_raw, with_eval_rows
from trainer.errors import ConfigError
from trainer.validation import validate_config

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SEARCH = {"name": "search", "description": "Search the web",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"}}}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": SEARCH}]


def _call(name: str, arguments: dict, **extra) -> dict:
    return {**extra, "type": "function", "function": {"name": name, "arguments": arguments}}


MESSAGES_ROW = {
    "messages": [
        {"role": "system", "content": "you can call tools."},
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}, {"type": "text", "text": "and Rome?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
        {"role": "assistant", "content": "Let me search too.", "reasoning_content": "they may want a forecast",
         "tool_calls": [{"name": "search", "arguments": '{"query": "Rome forecast", "top_k": 2}'}]},
        {"role": "tool", "content": "sunny all week"},
        {"role": "assistant", "content": "Paris 18C; Rome 21C, sunny all week.", "reasoning_content": "both answered"},
    ],
    "tools": json.dumps(TOOLS),
}
MESSAGES_EXPECTED = [
    {"role": "system", "content": "you can call tools."},
    {"role": "user", "content": "weather in Paris?\nand Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Paris"}, id="call_1"),
                                                          _call("get_weather", {"city": "Rome"}, id="call_2")]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    {"role": "assistant", "content": "Let me search too.", "reasoning_content": "they may want a forecast",
     "tool_calls": [_call("search", {"query": "Rome forecast", "top_k": 2})]},
    {"role": "tool", "content": "sunny all week"},
    {"role": "assistant", "content": "Paris 18C; Rome 21C, sunny all week.", "reasoning_content": "both answered"},
]
SHAREGPT_ROW = {  # LLaMA-Factory's shape: tools as JSON text of bare schemas, a top-level system
    "conversations": [
        {"from": "human", "value": "weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 18}'},
        {"from": "gpt", "value": "18C in Paris."},
        {"from": "human", "value": "Rome and Oslo?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": '{"city": "Rome"}'},
                                                       {"name": "get_weather", "arguments": {"city": "Oslo"}}])},
        {"from": "observation", "value": '[{"temp": 21}, {"temp": 4}]'},
        {"from": "gpt", "value": "Rome 21C, Oslo 4C."},
    ],
    "system": "you can call tools.",
    "tools": json.dumps([WEATHER, SEARCH]),
}
SHAREGPT_EXPECTED = [
    {"role": "system", "content": "you can call tools."},
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Paris"})]},
    {"role": "tool", "content": '{"temp": 18}'},
    {"role": "assistant", "content": "18C in Paris."},
    {"role": "user", "content": "Rome and Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Rome"}),
                                                          _call("get_weather", {"city": "Oslo"})]},
    {"role": "tool", "content": '[{"temp": 21}, {"temp": 4}]'},
    {"role": "assistant", "content": "Rome 21C, Oslo 4C."},
]
ALPACA_ROW = {"instruction": "and that plus 4?", "input": "", "output": "9", "system": "reply with just the answer.",
              "history": [["what is 2 plus 3?", "5"], ["double it", "10"]]}
ALPACA_EXPECTED = [
    {"role": "system", "content": "reply with just the answer."},
    {"role": "user", "content": "what is 2 plus 3?"}, {"role": "assistant", "content": "5"},
    {"role": "user", "content": "double it"}, {"role": "assistant", "content": "10"},
    {"role": "user", "content": "and that plus 4?"}, {"role": "assistant", "content": "9"},
]
PLAIN = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
PLAIN_MESSAGES = PLAIN["messages"]


def _write(folder: Path, rows: list[dict], eval_rows: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in (("train", rows), ("validation", eval_rows or rows)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def _cfg(folder: Path, *overrides: str, source: str = "jsonl", task: str = "sft"):
    return compose_cfg([f"task={task}", f"data={source}", f"data.path={folder}", *overrides])


def _load(folder: Path, *overrides: str, source: str = "jsonl") -> list[tuple[list[dict], list[dict] | None]]:
    cfg = _cfg(folder, *overrides, source=source)
    validate_config(cfg)
    return conversations_of(load_raw(get(cfg, "data"), "sft").train)


@pytest.mark.parametrize("fmt, row, expected, tools", [
    ("messages", MESSAGES_ROW, MESSAGES_EXPECTED, TOOLS),
    ("sharegpt", SHAREGPT_ROW, SHAREGPT_EXPECTED, TOOLS),
    ("alpaca", ALPACA_ROW, ALPACA_EXPECTED, None),
])
def test_each_format_loads_to_the_exact_openai_shape(tmp_path, fmt, row, expected, tools):
    messages, loaded_tools = _load(_write(tmp_path, [row]), f"data.format={fmt}")[0]
    assert messages == expected  # key for key: no key the row did not give, none it gave lost
    assert loaded_tools == tools


def test_tools_as_a_list_and_calls_without_ids_load_the_same(tmp_path):
    row = {"messages": [{"role": "user", "content": "weather in Paris?"},
                        {"role": "assistant", "tool_calls": [_call("get_weather", {"city": "Paris"})]},
                        {"role": "tool", "content": "18C"},
                        {"role": "assistant", "content": "18C."}],
           "tools": [TOOLS[0], WEATHER | {"name": "weather_bare"}]}  # OpenAI entry and a bare schema
    messages, tools = _load(_write(tmp_path, [row]))[0]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Paris"})]}
    assert tools == [TOOLS[0], {"type": "function", "function": WEATHER | {"name": "weather_bare"}}]
    # an empty list of calls (common in exported chat logs) is no call
    no_calls = {"messages": [PLAIN_MESSAGES[0], {"role": "assistant", "content": "a", "tool_calls": []}]}
    assert _load(_write(tmp_path / "a", [no_calls]))[0] == (PLAIN_MESSAGES, None)
    # a conversation that ends on the call (the model learns to call) is a conversation too
    ends_on_call = {"messages": row["messages"][:2]}
    assert _load(_write(tmp_path / "b", [ends_on_call]))[0] == (messages[:2], None)


def _error(folder: Path, *overrides: str, source: str = "jsonl") -> str:
    with pytest.raises(DataRowError) as err:
        _load(folder, *overrides, source=source)
    return str(err.value)


UNKNOWN_KEYS = {  # case -> (format, bad row, field named, what the message lists as read)
    "top level, messages": ("messages", {**PLAIN, "source": "web"}, "source", "reads messages, tools"),
    "in a turn, messages": ("messages", {"messages": [{"role": "user", "content": "q", "weight": 0.5},
                                                      PLAIN_MESSAGES[1]]}, "messages[0].weight", "reads role, content"),
    "in a tool call": ("messages", {"messages": [PLAIN_MESSAGES[0], {"role": "assistant", "tool_calls": [
        {"index": 0, **_call("get_weather", {"city": "Paris"})}]}]}, "messages[1].tool_calls[0].index",
        "reads id, type, function"),
    "a key of another role": ("messages", {"messages": [{"role": "user", "content": "q", "tool_call_id": "c1"},
                                                        PLAIN_MESSAGES[1]]}, "messages[0].tool_call_id",
                              "a user turn reads role, content"),
    "top level, sharegpt": ("sharegpt", {**SHAREGPT_ROW, "images": ["a.png"]}, "images",
                            "reads conversations, system, tools"),
    "in a turn, sharegpt": ("sharegpt", {"conversations": [{"from": "human", "value": "q", "loss": False},
                                                           {"from": "gpt", "value": "a"}]},
                            "conversations[0].loss", "reads from, value"),
    "top level, alpaca": ("alpaca", {**ALPACA_ROW, "category": "math"}, "category",
                          "reads instruction, input, output, system, history"),
}


@pytest.mark.parametrize("case", list(UNKNOWN_KEYS))
def test_an_unknown_key_is_an_error_naming_file_row_and_key(tmp_path, case):
    fmt, bad, field, reads = UNKNOWN_KEYS[case]
    good = {"messages": PLAIN, "sharegpt": SHAREGPT_ROW, "alpaca": ALPACA_ROW}[fmt]
    folder = _write(tmp_path, [good, bad])
    message = _error(folder, f"data.format={fmt}")
    assert message.startswith(f"{folder / 'train.jsonl'}: row 2: field {field!r}: unknown key"), message
    assert reads in message and "data.ignore_columns" in message, message


def test_ignore_columns_lets_named_keys_through_and_only_those(tmp_path):
    rows = [{**PLAIN, "id": 1, "source": "web"},
            {"messages": [{"role": "user", "content": "q", "weight": 0.5}, {"role": "assistant", "content": "a"}],
             "id": 2}]
    folder = _write(tmp_path, rows)
    assert _load(folder, "data.ignore_columns=[id,source,weight]") == [(PLAIN_MESSAGES, None)] * 2
    message = _error(folder, "data.ignore_columns=[id,weight]")
    assert "row 1: field 'source'" in message
    # a key the format reads cannot be ignored: say so before anything loads
    with pytest.raises(ConfigError, match="tools is read by data.format=messages"):
        validate_config(_cfg(folder, "data.ignore_columns=[id,tools]"))
    with pytest.raises(ConfigError, match="data.ignore_columns"):
        validate_config(_cfg(folder, "data.ignore_columns=id"))


def _turns(*turns: dict) -> dict:
    return {"messages": [PLAIN_MESSAGES[0], *turns]}


CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
BAD_ROWS = {  # case -> (format, bad row, field named, words in the message)
    "arguments not JSON": ("messages", _turns({**CALL, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}),
        "messages[1].tool_calls[0].function.arguments", "not JSON"),
    "arguments not an object": ("messages", _turns({**CALL, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "[1, 2]"}}]}),
        "messages[1].tool_calls[0].function.arguments", "a JSON object of arguments is required, got list"),
    "a call without a name": ("messages", _turns({"role": "assistant", "tool_calls": [{"arguments": {}}]}),
                              "messages[1].tool_calls[0].name", "a string is required, got NoneType"),
    "an image part": ("messages", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x.png"}}]},
        PLAIN_MESSAGES[1]]}, "messages[0].content[1].type", "'image_url'"),
    "a tool turn without a call": ("messages", {"messages": [PLAIN_MESSAGES[0], {"role": "tool", "content": "18C"},
                                                             PLAIN_MESSAGES[1]]},
                                   "messages[1]", "must follow an assistant turn with tool_calls"),
    "more results than calls": ("messages", _turns(CALL, {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"},
                                                   PLAIN_MESSAGES[1]), "messages[3]", "2 tool results answer 1"),
    "a result for another call": ("messages", _turns(CALL, {"role": "tool", "tool_call_id": "c9", "content": "1"},
                                                     PLAIN_MESSAGES[1]), "messages[2].tool_call_id", "c1"),
    "a call never answered": ("messages", _turns(CALL, {"role": "user", "content": "well?"}, PLAIN_MESSAGES[1]),
                              "messages[1]", "followed by the tool results"),
    "assistant content missing without calls": ("messages", _turns({"role": "assistant", "content": None}),
                                                "messages[1].content", "a string is required, got NoneType"),
    "tools not JSON": ("messages", {**PLAIN, "tools": "[{name: x"}, "tools", "not JSON"),
    "a tool without a name": ("messages", {**PLAIN, "tools": [{"type": "function", "function": {"parameters": {}}}]},
                              "tools[0].function.name", "a string is required"),
    "sharegpt call not JSON": ("sharegpt", {"conversations": [{"from": "human", "value": "q"},
                                                              {"from": "function_call", "value": "get_weather(Paris)"}]},
                               "conversations[1].value", "not JSON"),
    "sharegpt observation first": ("sharegpt", {"conversations": [{"from": "observation", "value": "18C"},
                                                                  {"from": "gpt", "value": "a"}]},
                                   "conversations[0]", "must follow an assistant turn with tool_calls"),
    "sharegpt two system prompts": ("sharegpt", {"system": "s1", "conversations": [
        {"from": "system", "value": "s2"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "conversations[0].from", "keep one of the two"),
    "alpaca history not pairs": ("alpaca", {**ALPACA_ROW, "history": [["only the question"]]}, "history[0]",
                                 "an [instruction, answer] pair"),
    "alpaca history answer empty": ("alpaca", {**ALPACA_ROW, "history": [["q", " "]]}, "history[0][1]", "empty"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_tool_or_turn_is_named_by_file_row_and_field(tmp_path, case):
    fmt, bad, field, words = BAD_ROWS[case]
    good = {"messages": PLAIN, "sharegpt": SHAREGPT_ROW, "alpaca": ALPACA_ROW}[fmt]
    folder = _write(tmp_path, [good, good, bad], [good])
    message = _error(folder, f"data.format={fmt}")
    assert message.startswith(f"{folder / 'train.jsonl'}: row 3: field {field!r}: "), message
    assert words in message, message


def test_stored_splits_give_back_exactly_what_was_loaded(tmp_path):
    conversations = [(MESSAGES_EXPECTED, TOOLS), (SHAREGPT_EXPECTED, None), (ALPACA_EXPECTED, None),
                     (PLAIN_MESSAGES, [TOOLS[1]])]
    assert conversations_of(as_split(copy.deepcopy(conversations))) == conversations
    # through load_raw's fixed-seed subset (shuffle + select): the rows kept are the originals, key for key
    rows = [MESSAGES_ROW, {**PLAIN, "tools": [TOOLS[1]]}, PLAIN, {"messages": MESSAGES_EXPECTED[:3]}]
    folder = _write(tmp_path, rows)
    everything = _load(folder)
    subset = _load(folder, "data.max_train_samples=2")
    assert len(subset) == 2 and len({json.dumps(c) for c in subset}) == 2
    assert all(c in everything for c in subset)
    assert everything[0] == (MESSAGES_EXPECTED, TOOLS) and everything[1] == (PLAIN_MESSAGES, [TOOLS[1]])


def test_parquet_and_csv_rows_keep_their_own_keys(tmp_path):
    """Arrow gives every turn (and every arguments object) the union of the keys of all rows, null
    where a row had none; loaded conversations have exactly the keys each row gave."""
    import datasets

    rows = copy.deepcopy([MESSAGES_ROW | {"tools": TOOLS},
            {"messages": [PLAIN_MESSAGES[0], {"role": "assistant", "content": None,
                                              "tool_calls": [_call("search", {"query": "x"})]},
                          {"role": "tool", "content": "found"}, PLAIN_MESSAGES[1]], "tools": [TOOLS[1]]},
            {"messages": PLAIN_MESSAGES, "tools": None}])
    for row in rows:  # parquet cannot mix text and objects in one column: arguments as objects
        for turn in row["messages"]:
            for call in turn.get("tool_calls", []):
                if "function" in call and isinstance(call["function"]["arguments"], str):
                    call["function"]["arguments"] = json.loads(call["function"]["arguments"])
                elif "function" not in call:
                    call.update(_call(call.pop("name"), json.loads(call.pop("arguments"))))
    rows = [r | {"messages": [t | {"content": "weather in Paris?\nand Rome?"} if isinstance(t["content"], list) else t
                              for t in r["messages"]]} for r in rows]
    folder = tmp_path / "parquet"
    folder.mkdir()
    for split in ("train", "validation"):
        datasets.Dataset.from_list(rows).to_parquet(str(folder / f"{split}.parquet"))
    loaded = _load(folder, source="parquet")
    assert loaded[0] == (MESSAGES_EXPECTED, TOOLS)
    assert loaded[1] == (rows[1]["messages"], [TOOLS[1]]) and loaded[2] == (PLAIN_MESSAGES, None)

    folder = tmp_path / "csv"
    folder.mkdir()
    for split in ("train", "validation"):  # a CSV cell holds the turn list and the tools as JSON text
        datasets.Dataset.from_list([{"messages": json.dumps(r["messages"]), "tools": json.dumps(r["tools"])}
                                    for r in rows]).to_csv(str(folder / f"{split}.csv"), index=False)
    assert _load(folder, source="csv") == loaded


def test_with_eval_rows_reads_the_trial_format_with_tools(tmp_path):
    folder = _write(tmp_path / "data", [PLAIN])
    cfg = _cfg(folder, "data.format=sharegpt", "data.ignore_columns=[id]")
    data = get(cfg, "data")
    raw = load_raw({**data, "format": "messages"}, "sft")
    eval_file = tmp_path / "input.jsonl"
    eval_file.write_text(json.dumps({**SHAREGPT_ROW, "id": 1}) + "\n")
    assert conversations_of(with_eval_rows(raw, str(eval_file), data, "sft").eval) == [(SHAREGPT_EXPECTED, TOOLS)]
    eval_file.write_text(json.dumps({**SHAREGPT_ROW, "note": "x"}) + "\n")
    with pytest.raises(DataRowError, match=f"{eval_file}: row 1: field 'note'"):
        with_eval_rows(raw, str(eval_file), data, "sft")


def test_prompt_completion_reads_prompt_and_completion_columns_by_default(tmp_path):
    rows = [{"prompt": "what is 1 plus 1?", "completion": "2"}]
    folder = _write(tmp_path, rows)
    assert _load(folder, "data.format=prompt_completion") == [
        ([{"role": "user", "content": "what is 1 plus 1?"}, {"role": "assistant", "content": "2"}], None)]
    # named columns still win
    other = _write(tmp_path / "named", [{"question": "q", "answer": "a"}])
    assert _load(other, "data.format=prompt_completion", "data.text_column=question",
                 "data.completion_column=answer")[0][0] == PLAIN_MESSAGES
    # causal_lm: the format alone reads the same columns; the old spelled-out config is unchanged
    for overrides in (["data.format=prompt_completion"],
                      ["data.text_column=prompt", "data.completion_column=completion", "data.label_column=null"]):
        cfg = _cfg(folder, *overrides, task="causal_lm")
        validate_config(cfg)
        data = get(cfg, "data")
        assert (data["text_column"], data["completion_column"]) == ("prompt", "completion")
        raw = load_raw(data, "causal_lm")
        assert raw.train["prompt"] == ["what is 1 plus 1?"] and raw.train["completion"] == ["2"]
        assert raw.num_labels is None
    # other formats keep `text` and no completion column
    for task in ("classification", "causal_lm"):
        data = get(_cfg(folder, task=task), "data")
        assert (data["text_column"], data["completion_column"]) == ("text", None)
    # a prompt_completion row with another key is named like any chat row
    _write(folder, [{**rows[0], "id": 3}])
    assert "row 1: field 'id': unknown key" in _error(folder, "data.format=prompt_completion")


def test_a_row_with_an_unknown_key_stops_the_sweep_before_any_trial(tmp_path, tiny_chat_llama_dir):
    folder = _write(tmp_path / "data", [PLAIN, {**PLAIN, "source": "web"}], [PLAIN])
    proc = run_sweep(tmp_path, f"model.name_or_path={tiny_chat_llama_dir}", "task=sft", "data=jsonl",
                     f"data.path={folder}", "search_space=llm", "quant=none", check=False, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{folder / 'train.jsonl'}: row 2: field 'source': unknown key" in out, out[-3000:]
    assert "data.ignore_columns" in out, out[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna-journal.log").exists()
