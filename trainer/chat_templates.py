"""Conversations rendered with a chat template, split into the spans the loss may see.

The template is the tokenizer's own (`apply_chat_template`), or `task.chat_template`: a named one
below or a Jinja string. Which tokens are the assistant's is found by prefix rendering: the
conversation up to turn i with the generation prompt is a prefix of the conversation through
turn i, and the difference is that assistant turn plus its end-of-turn marker. This works for
any template that renders earlier turns the same whatever follows (those that do not are
refused by name), needs no generation markers in the template, and tokenizes each span alone, so
a prompt is tokenized exactly as it will be at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

# Templates for models that ship none (base models). Each ends an assistant turn with one
# marker the model learns to emit; the generation prompt is what precedes an assistant turn.
NAMED_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "zephyr": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    "alpaca": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
}
TRAIN_ON = ("assistant", "last_assistant", "all")
TRUNCATION = ("left_turns", "drop")


def use_chat_template(tok: Any, chat_template: str | None) -> None:
    """Give `tok` the template the task asks for; keep the tokenizer's own when none is asked
    for; a tokenizer with neither is an error (a silent fallback would train on a format the
    model will never be prompted with)."""
    if chat_template:
        if chat_template in NAMED_TEMPLATES:
            tok.chat_template = NAMED_TEMPLATES[chat_template]
        elif "{{" in chat_template or "{%" in chat_template:
            tok.chat_template = chat_template
        else:
            raise ConfigError("task.chat_template", chat_template,
                              f"one of {', '.join(NAMED_TEMPLATES)} or a Jinja template string")
    if not getattr(tok, "chat_template", None):
        raise ConfigError("task.chat_template", chat_template,
                          f"one of {', '.join(NAMED_TEMPLATES)} or a Jinja string",
                          "this tokenizer has no chat template (a base model): choose the format to train it on")


def _render(tok: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class Rendered:
    """The rendered conversation as consecutive text spans; `trained[i]` says whether span i is
    in the loss, `last` is the index of the final assistant span."""

    spans: list[str]
    trained: list[bool]
    last: int


def render_spans(tok: Any, messages: list[dict[str, str]], train_on: str) -> Rendered:
    """Spans of the whole conversation: text between assistant turns, and each assistant turn
    (its content and end-of-turn marker, trailing whitespace left outside)."""
    full = _render(tok, messages, False)
    spans: list[str] = []
    trained: list[bool] = []
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    pos = 0
    for i in assistant:
        before, through = _render(tok, messages[:i], True), _render(tok, messages[: i + 1], False)
        end = len(through.rstrip())
        if not (through.startswith(before) and full.startswith(through)) or len(before) < pos or end <= len(before):
            raise ConfigError("task.chat_template", "the template in use (the tokenizer's or this key's)",
                              "a template that renders earlier turns the same whatever follows",
                              f"turn {i} renders differently once later turns are added, so the assistant "
                              "tokens cannot be located; use a named template or fix the Jinja")
        spans += [full[pos:len(before)], full[len(before):end]]
        trained += [train_on == "all", train_on == "assistant" or i == assistant[-1] or train_on == "all"]
        pos = end
    spans.append(full[pos:])
    trained.append(train_on == "all")
    return Rendered(spans, trained, last=len(spans) - 2)


def end_of_turn(tok: Any) -> str:
    """The marker that ends an assistant turn in this template (`<|im_end|>`, `<|eot_id|>`, the
    eos token, ...): generation stops there. Empty when the template adds none."""
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}]
    rendered = render_spans(tok, probe, "assistant").spans[-2]
    at = rendered.find("ANSWER")
    return rendered[at + len("ANSWER"):].strip() if at >= 0 else ""


def end_of_turn_id(tok: Any) -> int | None:
    """The token id of the end-of-turn marker when it is a single token (the usual case)."""
    marker = end_of_turn(tok)
    ids = tok(marker, add_special_tokens=False)["input_ids"] if marker else []
    return ids[0] if len(ids) == 1 else None
