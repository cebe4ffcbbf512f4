"""Chat and instruction rows (`data.format`) turned into one shape: OpenAI-style conversations.

`messages` (Hugging Face / OpenAI chat, with `tools`, `tool_calls`, role `tool`), `sharegpt`
(LLaMA-Factory's: `conversations: [{from, value}]` with `function_call` / `observation`, and
top-level `system` / `tools`) and `alpaca` (`instruction`, `input`, `output`, `system`, `history`)
all become a (messages, tools) pair; so does `prompt_completion` when the task renders it through a
chat template. A message is

    {"role": "system" | "user" | "assistant" | "tool", "content": str | None,
     "tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}, "id"?: str}],
     "reasoning_content": str, "tool_call_id": str, "name": str}

with only the keys the row gave (chat templates test `is defined`); `tools` is a list of
`{"type": "function", "function": {...JSON schema...}}` or None. Every row is checked, and the first
bad one stops the run before any trial with the file, the row number and the field: a silently
skipped row, or a silently dropped key, is a silently different data set. A key no format reads is
an error unless `data.ignore_columns` names it.

Loaded splits store each conversation as JSON text (`as_split`): Arrow would unify the ragged turn
dicts into one struct and add null keys. `conversations_of` is the one reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text_label")
CHAT_FORMATS = ("messages", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant", "tool")
TURN_KEYS = {  # what a messages turn of each role reads
    "system": ("role", "content"),
    "user": ("role", "content"),
    "assistant": ("role", "content", "tool_calls", "reasoning_content"),
    "tool": ("role", "content", "tool_call_id", "name"),
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant",
                  "function_call": "assistant", "observation": "tool"}
SHAREGPT_TURN_KEYS = ("from", "value")
ALPACA_FIELDS = ("instruction", "input", "output", "system", "history")
PART_KEYS = ("type", "text")
TEXT_PARTS = ("text", "input_text", "output_text")  # OpenAI chat / Responses text parts
TOOLS_COLUMN = "tools"
SYSTEM_COLUMN = "system"  # sharegpt's top-level system prompt

Message = dict[str, Any]
Tools = list[dict[str, Any]] | None
Conversation = tuple[list[Message], Tools]


class DataRowError(ConfigError):
    """One row of a data file that cannot be used, named by file, row (1-based) and field."""

    def __init__(self, where: str, row: int, field: str, problem: str) -> None:
        super().__init__("data", f"{where} row {row}", problem)
        self.where, self.row, self.field = where, row, field
        self.args = (f"{where}: row {row}: field {field!r}: {problem}",)

    def __str__(self) -> str:
        return self.args[0]


def resolve_format(data: dict[str, Any], task_type: str) -> str:
    """`data.format`, or what the task implies when it is null: sft reads chat messages, a causal
    LM with a completion column reads prompt/completion pairs, everything else text + label."""
    fmt = data.get("format")
    if fmt is not None:
        return fmt
    if task_type == "sft":
        return "messages"
    return "prompt_completion" if task_type != "classification" and data.get("completion_column") else "text_label"


def messages_column(data: dict[str, Any], fmt: str) -> str:
    return data.get("messages_column") or ("conversations" if fmt == "sharegpt" else "messages")


def alpaca_columns(data: dict[str, Any]) -> dict[str, str]:
    names = dict(data.get("alpaca_columns") or {})
    return {f: names.get(f) or f for f in ALPACA_FIELDS}


def row_columns(data: dict[str, Any], fmt: str) -> tuple[str, ...]:
    """The top-level keys a row of this format reads: any other key is an error unless ignored."""
    if fmt == "messages":
        return (messages_column(data, fmt), TOOLS_COLUMN)
    if fmt == "sharegpt":
        return (messages_column(data, fmt), SYSTEM_COLUMN, TOOLS_COLUMN)
    if fmt == "alpaca":
        return tuple(alpaca_columns(data).values())
    if fmt == "prompt_completion":
        return tuple(c for c in (data.get("text_column"), data.get("completion_column")) if c)
    return ()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, blank lines skipped; a line that is not a JSON object is
    an error naming its line number (rows are numbered by line)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataRowError(str(path), number, "(line)", f"not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataRowError(str(path), number, "(line)", f"a JSON object is required, got {type(obj).__name__}")
            rows.append({"__row__": number, **obj})
    return rows


def _without_nulls(value: Any) -> Any:
    """Arrow gives every struct the union of its rows' keys, null where a row had none."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@dataclass(frozen=True)
class _Row:
    """Where a row came from and what the user lets through, for checks and their errors."""

    where: str
    number: int
    ignored: frozenset[str]
    from_arrow: bool  # csv/parquet/hub: a null inside a struct may be Arrow's, not the user's

    def error(self, field: str, problem: str) -> DataRowError:
        return DataRowError(self.where, self.number, field, problem)

    def given(self, obj: dict[str, Any], reads: Sequence[str], field: str, what: str) -> dict[str, Any]:
        """The keys of `obj` that carry a value (null counts as absent), after checking that each
        is one this place reads or one `data.ignore_columns` names."""
        for key, value in obj.items():
            if key == "__row__" or value is None or key in reads or key in self.ignored:
                continue
            path = f"{field}.{key}" if field else key
            raise self.error(path, f"unknown key: {what} reads {', '.join(reads)}; nothing else is "
                                   f"dropped silently: list the key in data.ignore_columns to leave it out")
        return {k: v for k, v in obj.items() if k in reads and v is not None}

    def json(self, value: Any, field: str, what: str) -> Any:
        """A JSON-text cell decoded (CSV cells and LLaMA-Factory's columns hold lists as text)."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise self.error(field, f"{what} is required, got text that is not JSON ({e.msg}: {value!r:.60})") from None


def _text(value: Any, row: _Row, field: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise row.error(field, f"a string is required, got {type(value).__name__} ({value!r:.60})")
    if required and not value.strip():
        raise row.error(field, "an empty string (this field must have content)")
    return value


def _content(value: Any, row: _Row, field: str) -> str | None:
    """Text as given, or a list of text parts joined by newlines (as vLLM serves them); None stays
    None for the caller to judge. Images and other non-text parts are refused: this trains text."""
    if not isinstance(value, list):
        if value is not None and not isinstance(value, str):
            raise row.error(field, f"a string is required, got {type(value).__name__} ({value!r:.60}); "
                                   "a list of {type: text, text} parts also works")
        return value
    texts = []
    for i, part in enumerate(value):
        where = f"{field}[{i}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise row.error(where, f"a {{type: text, text}} part is required, got {type(part).__name__}")
        kind = part.get("type", "text" if "text" in part else None)
        if kind not in TEXT_PARTS:
            raise row.error(f"{where}.type", f"only text parts can be trained, got a {kind!r} part "
                                             "(this platform fine-tunes on text; remove the part or the row)")
        part = row.given(part, PART_KEYS, where, "a content part")
        texts.append(_text(part.get("text"), row, f"{where}.text", required=False))
    return "\n".join(texts)


def _arguments(value: Any, row: _Row, field: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise row.error(field, f"the arguments as a JSON object are required, got text that is not JSON "
                                   f"({e.msg}: {value!r:.60})") from None
    if not isinstance(value, dict):
        raise row.error(field, f"a JSON object of arguments is required, got {type(value).__name__} ({value!r:.60})")
    return _without_nulls(value) if row.from_arrow else value


def _tool_call(call: Any, row: _Row, field: str) -> dict[str, Any]:
    """`{"type": "function", "function": {"name", "arguments"}, "id"?}` or the flat `{"name",
    "arguments"}`; arguments as an object or its JSON text, always an object out."""
    if not isinstance(call, dict):
        raise row.error(field, f"a tool call object is required, got {type(call).__name__} ({call!r:.60})")
    flat = call.get("function") is None
    call = row.given(call, ("id", "type", "name", "arguments") if flat else ("id", "type", "function"), field,
                     "a tool call")
    if call.get("type", "function") != "function":
        raise row.error(f"{field}.type", f"'function' is required, got {call['type']!r}")
    function, where = (call, field) if flat else (call["function"], f"{field}.function")
    if not flat:
        if not isinstance(function, dict):
            raise row.error(where, f"a {{name, arguments}} object is required, got {type(function).__name__}")
        function = row.given(function, ("name", "arguments"), where, "a tool call's function")
    out: dict[str, Any] = {"type": "function", "function": {
        "name": _text(function.get("name"), row, f"{where}.name"),
        "arguments": _arguments(function.get("arguments"), row, f"{where}.arguments")}}
    if "id" in call:
        out["id"] = _text(call["id"], row, f"{field}.id")
    return out


def _tool_calls(value: Any, row: _Row, field: str) -> list[dict[str, Any]]:
    value = row.json(value, field, "a list of tool calls")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise row.error(field, f"a non-empty list of tool calls is required, got {value!r:.60}")
    return [_tool_call(call, row, f"{field}[{i}]") for i, call in enumerate(value)]


def _tools(value: Any, row: _Row, field: str) -> Tools:
    """The functions a conversation may call: OpenAI `{"type": "function", "function": schema}`
    entries or bare schemas (LLaMA-Factory's), as a list or its JSON text; none -> None."""
    if isinstance(value, str) and not value.strip():
        return None
    value = row.json(value, field, "a list of tools")
    if value is None:
        return None
    if not isinstance(value, list):
        raise row.error(field, f"a list of function schemas is required, got {type(value).__name__} ({value!r:.60})")
    tools = []
    for i, tool in enumerate(_without_nulls(value) if row.from_arrow else value):
        where = f"{field}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise row.error(where, "{type: function, function: {name, description, parameters}} or a bare "
                                   f"{{name, description, parameters}} schema is required, got {tool!r:.80}")
        nested = tool.get("function") is not None
        schema = tool["function"] if nested else {k: v for k, v in tool.items() if k != "type"}
        if not isinstance(schema, dict):
            raise row.error(f"{where}.function", f"a function schema object is required, got {type(schema).__name__}")
        _text(schema.get("name"), row, f"{where}.function.name" if nested else f"{where}.name")
        tools.append({**tool, "type": "function"} if nested else {"type": "function", "function": schema})
    return tools or None


def _turn_list(value: Any, row: _Row, field: str) -> list[Any]:
    value = row.json(value, field, "a list of turns")
    if not isinstance(value, list) or not value:
        raise row.error(field, f"a non-empty list of turns is required, got {type(value).__name__}")
    return value


def _checked(turns: list[Message], fields: list[str], row: _Row, field: str) -> list[Message]:
    """The conversation rules every chat format shares; `fields[i]` names where turns[i] came from."""
    calls: list[dict[str, Any]] = []  # the calls the run of tool turns in progress answers
    answered = 0
    for i, turn in enumerate(turns):
        role = turn["role"]
        if role == "system" and i != 0:
            raise row.error(fields[i], "a system turn is allowed only first")
        if role == "tool":
            if not calls:
                raise row.error(fields[i], "a tool turn must follow an assistant turn with tool_calls (the result "
                                           "answers a call)")
            answered += 1
            if answered > len(calls):
                raise row.error(fields[i], f"{answered} tool results answer {len(calls)} tool call(s)")
            ids = [c["id"] for c in calls if "id" in c]
            if "tool_call_id" in turn and ids and turn["tool_call_id"] not in ids:
                raise row.error(f"{fields[i]}.tool_call_id", f"one of the call ids {', '.join(ids)} is required, "
                                                             f"got {turn['tool_call_id']!r}")
            continue
        if calls and not answered:
            raise row.error(fields[i - 1], "an assistant turn with tool_calls in mid-conversation must be followed "
                                           f"by the tool results, got a {role!r} turn")
        calls, answered = turn.get("tool_calls", []), 0
    if not any(t["role"] == "assistant" for t in turns):
        raise row.error(field, "the conversation has no assistant turn (nothing to learn)")
    if turns[-1]["role"] != "assistant":
        raise row.error(fields[-1], f"the conversation must end with an assistant turn, it ends with "
                                    f"{turns[-1]['role']!r}")
    return turns


def _message(turn: dict[str, Any], row: _Row, field: str) -> Message:
    """One messages-format turn in the OpenAI shape, with only the keys it gave."""
    role = turn.get("role")
    if role not in ROLES:
        raise row.error(f"{field}.role", f"one of {', '.join(ROLES)} is required, got {role!r}")
    given = row.given(turn, TURN_KEYS[role], field, f"a {role} turn")
    message: Message = {"role": role}
    content = _content(turn.get("content"), row, f"{field}.content")
    if role == "assistant":
        if given.get("tool_calls") not in (None, [], ""):  # an empty list of calls is no call
            message["content"] = content
            message["tool_calls"] = _tool_calls(given["tool_calls"], row, f"{field}.tool_calls")
        else:
            message["content"] = _text(content, row, f"{field}.content")
        if "reasoning_content" in given:
            message["reasoning_content"] = _text(given["reasoning_content"], row, f"{field}.reasoning_content",
                                                 required=False)
    else:
        message["content"] = _text(content, row, f"{field}.content", required=False)
    for key in ("tool_call_id", "name"):
        if key in given:
            message[key] = _text(given[key], row, f"{field}.{key}")
    return message


def _from_messages(record: dict[str, Any], column: str, row: _Row) -> Conversation:
    given = row.given(record, row_columns({"messages_column": column}, "messages"), "", "data.format=messages")
    fields, turns = [], []
    for i, turn in enumerate(_turn_list(given.get(column), row, column)):
        field = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise row.error(field, f"a {{role, content}} object is required, got {type(turn).__name__}")
        fields.append(field)
        turns.append(_message(turn, row, field))
    return _checked(turns, fields, row, column), _tools(given.get(TOOLS_COLUMN), row, TOOLS_COLUMN)


def _function_call(value: Any, row: _Row, field: str) -> Message:
    """A sharegpt `function_call` value, JSON `{"name", "arguments"}` or a list of them: an
    assistant turn that only calls."""
    value = row.json(_text(value, row, field) if isinstance(value, str) else value, field,
                     "a JSON {name, arguments} object (or a list of them)")
    return {"role": "assistant", "content": None, "tool_calls": _tool_calls(value, row, field)}


def _from_sharegpt(record: dict[str, Any], column: str, row: _Row) -> Conversation:
    given = row.given(record, row_columns({"messages_column": column}, "sharegpt"), "", "data.format=sharegpt")
    fields, turns = [], []
    if SYSTEM_COLUMN in given and _text(given[SYSTEM_COLUMN], row, SYSTEM_COLUMN, required=False).strip():
        fields.append(SYSTEM_COLUMN)
        turns.append({"role": "system", "content": given[SYSTEM_COLUMN]})
    for i, turn in enumerate(_turn_list(given.get(column), row, column)):
        field = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise row.error(field, f"a {{from, value}} object is required, got {type(turn).__name__}")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise row.error(f"{field}.from", f"one of {', '.join(SHAREGPT_ROLES)} is required, got {speaker!r}")
        value = row.given(turn, SHAREGPT_TURN_KEYS, field, "a sharegpt turn").get("value")
        if speaker == "system" and fields[:1] == [SYSTEM_COLUMN]:
            raise row.error(f"{field}.from", "a system turn and a top-level system column in one row: "
                                             "keep one of the two")
        role = SHAREGPT_ROLES[speaker]
        fields.append(field)
        if speaker == "function_call":
            turns.append(_function_call(value, row, f"{field}.value"))
        else:
            turns.append({"role": role, "content": _text(value, row, f"{field}.value", required=role == "assistant")})
    return _checked(turns, fields, row, column), _tools(given.get(TOOLS_COLUMN), row, TOOLS_COLUMN)


def _history(value: Any, row: _Row, field: str) -> tuple[list[Message], list[str]]:
    """Alpaca `history`: earlier [instruction, answer] pairs, oldest first."""
    value = row.json(value, field, "a list of [instruction, answer] pairs")
    if not isinstance(value, list):
        raise row.error(field, f"a list of [instruction, answer] pairs is required, got {type(value).__name__}")
    turns, fields = [], []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise row.error(f"{field}[{i}]", f"an [instruction, answer] pair is required, got {pair!r:.60}")
        turns += [{"role": "user", "content": _text(pair[0], row, f"{field}[{i}][0]")},
                  {"role": "assistant", "content": _text(pair[1], row, f"{field}[{i}][1]")}]
        fields += [f"{field}[{i}][0]", f"{field}[{i}][1]"]
    return turns, fields


def _from_alpaca(record: dict[str, Any], columns: dict[str, str], row: _Row) -> Conversation:
    given = row.given(record, tuple(columns.values()), "", "data.format=alpaca")
    instruction = _text(given.get(columns["instruction"]), row, columns["instruction"])
    extra = _text(given.get(columns["input"]), row, columns["input"], required=False)
    output = _text(given.get(columns["output"]), row, columns["output"])
    system = _text(given.get(columns["system"]), row, columns["system"], required=False)
    turns, fields = ([{"role": "system", "content": system}], [columns["system"]]) if system.strip() else ([], [])
    if columns["history"] in given:
        earlier, where = _history(given[columns["history"]], row, columns["history"])
        turns, fields = turns + earlier, fields + where
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _checked(turns, fields + [columns["instruction"], columns["output"]], row, columns["output"]), None


def _from_prompt_completion(record: dict[str, Any], data: dict[str, Any], row: _Row) -> Conversation:
    prompt, completion = data.get("text_column"), data.get("completion_column")
    if not completion:
        raise ConfigError("data.completion_column", completion, "a column name for data.format=prompt_completion")
    given = row.given(record, (prompt, completion), "", "data.format=prompt_completion")
    return [{"role": "user", "content": _text(given.get(prompt), row, prompt)},
            {"role": "assistant", "content": _text(given.get(completion), row, completion)}], None


def to_conversations(records: Iterable[dict[str, Any]], data: dict[str, Any], fmt: str, where: str,
                     from_arrow: bool = False) -> list[Conversation]:
    """One (messages, tools) pair per record; `__row__` in a record is its row number (else
    1-based order). `from_arrow`: the records came through a datasets/Arrow table (csv, parquet,
    hub), whose structs carry null for keys a row did not have; those nulls are read as absent."""
    column, alpaca = messages_column(data, fmt), alpaca_columns(data)
    ignored = frozenset(data.get("ignore_columns") or ())
    out = []
    for i, record in enumerate(records, 1):
        row = _Row(where, int(record.get("__row__", i)), ignored, from_arrow)
        if fmt == "messages":
            out.append(_from_messages(record, column, row))
        elif fmt == "sharegpt":
            out.append(_from_sharegpt(record, column, row))
        elif fmt == "alpaca":
            out.append(_from_alpaca(record, alpaca, row))
        elif fmt == "prompt_completion":
            out.append(_from_prompt_completion(record, data, row))
        else:
            raise ConfigError("data.format", fmt, f"one of {', '.join(CHAT_FORMATS + ('prompt_completion',))} for task=sft")
    if not out:
        raise ConfigError("data.path", where, "a split with at least one row", "no rows")
    return out


def as_split(conversations: Iterable[Conversation]) -> Any:
    """A datasets.Dataset holding each conversation as JSON text (`messages`, `tools`): the
    nested, ragged shape survives shuffles and selects exactly. Read it with `conversations_of`."""
    import datasets

    pairs = list(conversations)
    return datasets.Dataset.from_dict({"messages": [json.dumps(m, ensure_ascii=False) for m, _ in pairs],
                                       TOOLS_COLUMN: [json.dumps(t, ensure_ascii=False) for _, t in pairs]})


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    if isinstance(value, list):  # a split built from Python lists: Arrow may have added null keys
        return [{k: v for k, v in m.items() if v is not None or k == "content"} if isinstance(m, dict) else m
                for m in value]
    return value


def conversations_of(split: Any) -> list[Conversation]:
    """The (messages, tools) of every row of a loaded SFT split, in order: the one way the encoder
    reads conversations, whatever shape the split stores them in (JSON text from `as_split`, or
    lists of message dicts)."""
    tools = split[TOOLS_COLUMN] if TOOLS_COLUMN in getattr(split, "column_names", ()) else [None] * len(split)
    return [(_decoded(m), _decoded(t) if isinstance(t, str) else t) for m, t in zip(split["messages"], tools)]
