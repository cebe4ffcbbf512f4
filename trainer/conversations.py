"""Chat and instruction rows (`data.format`) turned into one shape: a list of {role, content} turns.

`messages` (Hugging Face / OpenAI chat), `sharegpt` (`conversations: [{from, value}]`) and
`alpaca` (`instruction`, optional `input` and `system`, `output`) all become messages; so does
`prompt_completion` when the task renders it through a chat template. Every row is checked, and
the first bad one stops the run before any trial with the file, the row number and the field:
a silently skipped row is a silently different data set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text_label")
CHAT_FORMATS = ("messages", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
ALPACA_FIELDS = ("instruction", "input", "output", "system")

Message = dict[str, str]


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
    return {f: names.get(f, f) for f in ALPACA_FIELDS}


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


def _text(value: Any, where: str, row: int, field: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataRowError(where, row, field, f"a string is required, got {type(value).__name__} ({value!r:.60})")
    if required and not value.strip():
        raise DataRowError(where, row, field, "an empty string (this field must have content)")
    return value


def _checked(turns: list[Message], where: str, row: int, field: str) -> list[Message]:
    """The conversation rules every chat format shares."""
    for i, turn in enumerate(turns):
        if turn["role"] == "system" and i != 0:
            raise DataRowError(where, row, f"{field}[{i}]", "a system turn is allowed only first")
    if not any(t["role"] == "assistant" for t in turns):
        raise DataRowError(where, row, field, "the conversation has no assistant turn (nothing to learn)")
    if turns[-1]["role"] != "assistant":
        raise DataRowError(where, row, f"{field}[{len(turns) - 1}]",
                           f"the conversation must end with an assistant turn, it ends with {turns[-1]['role']!r}")
    return turns


def _as_list(value: Any, where: str, row: int, field: str) -> list[Any]:
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataRowError(where, row, field, "a list of turns is required, got text that is not JSON") from None
    if not isinstance(value, list) or not value:
        raise DataRowError(where, row, field, f"a non-empty list of turns is required, got {type(value).__name__}")
    return value


def _from_messages(record: dict[str, Any], column: str, where: str, row: int) -> list[Message]:
    turns = []
    for i, turn in enumerate(_as_list(record.get(column), where, row, column)):
        field = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise DataRowError(where, row, field, f"a {{role, content}} object is required, got {type(turn).__name__}")
        role = turn.get("role")
        if role not in ROLES:
            raise DataRowError(where, row, f"{field}.role", f"one of {', '.join(ROLES)} is required, got {role!r}")
        turns.append({"role": role, "content": _text(turn.get("content"), where, row, f"{field}.content",
                                                     required=role == "assistant")})
    return _checked(turns, where, row, column)


def _from_sharegpt(record: dict[str, Any], column: str, where: str, row: int) -> list[Message]:
    turns = []
    for i, turn in enumerate(_as_list(record.get(column), where, row, column)):
        field = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise DataRowError(where, row, field, f"a {{from, value}} object is required, got {type(turn).__name__}")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise DataRowError(where, row, f"{field}.from", f"one of {', '.join(SHAREGPT_ROLES)} is required, got {speaker!r}")
        role = SHAREGPT_ROLES[speaker]
        turns.append({"role": role, "content": _text(turn.get("value"), where, row, f"{field}.value",
                                                     required=role == "assistant")})
    return _checked(turns, where, row, column)


def _from_alpaca(record: dict[str, Any], columns: dict[str, str], where: str, row: int) -> list[Message]:
    instruction = _text(record.get(columns["instruction"]), where, row, columns["instruction"])
    extra = _text(record.get(columns["input"]), where, row, columns["input"], required=False)
    output = _text(record.get(columns["output"]), where, row, columns["output"])
    system = _text(record.get(columns["system"]), where, row, columns["system"], required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _from_prompt_completion(record: dict[str, Any], data: dict[str, Any], where: str, row: int) -> list[Message]:
    prompt, completion = data["text_column"], data.get("completion_column")
    if not completion:
        raise ConfigError("data.completion_column", completion, "a column name for data.format=prompt_completion")
    return [{"role": "user", "content": _text(record.get(prompt), where, row, prompt)},
            {"role": "assistant", "content": _text(record.get(completion), where, row, completion)}]


def conversations_of(split: Any) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """The (messages, tools) of every row of a loaded SFT split, in order: the one way the encoder
    reads conversations, whatever shape the split stores them in."""
    tools = split["tools"] if "tools" in getattr(split, "column_names", ()) else [None] * len(split)
    return [(list(m), t) for m, t in zip(split["messages"], tools)]


def to_messages(records: Iterable[dict[str, Any]], data: dict[str, Any], fmt: str, where: str) -> list[list[Message]]:
    """One message list per record; `__row__` in a record is its row number (else 1-based order)."""
    column, alpaca = messages_column(data, fmt), alpaca_columns(data)
    out = []
    for i, record in enumerate(records, 1):
        row = int(record.get("__row__", i))
        if fmt == "messages":
            out.append(_from_messages(record, column, where, row))
        elif fmt == "sharegpt":
            out.append(_from_sharegpt(record, column, where, row))
        elif fmt == "alpaca":
            out.append(_from_alpaca(record, alpaca, where, row))
        elif fmt == "prompt_completion":
            out.append(_from_prompt_completion(record, data, where, row))
        else:
            raise ConfigError("data.format", fmt, f"one of {', '.join(CHAT_FORMATS + ('prompt_completion',))} for task=sft")
    if not out:
        raise ConfigError("data.path", where, "a split with at least one row", "no rows")
    return out
