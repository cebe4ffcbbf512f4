"""Conversations rendered with their chat template, and where the loss looks in them.

The template is the tokenizer's own (`apply_chat_template`), or `task.chat_template`: a named one
below or a Jinja string. Each conversation is rendered once, exactly as inference renders it, and
tokenized once. The assistant turns are found inside that one rendering:

- by the template's `{% generation %}` blocks where it has them (transformers' assistant mask);
- otherwise by rendering the same conversation a second time with every text field wrapped in
  invisible sentinels (private-use characters no template touches). Removing the sentinels gives
  back the real rendering character for character, and their positions say where each message's
  text sits in it; the tokenizer's offset mapping turns characters into tokens.

A trained turn runs from the end of the assistant header (the template's generation prompt, as
inference feeds it) through the marker the model must emit to end the turn: the first end marker
the template writes after it (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`, ...), or, for
templates that end a turn with the next role token (GLM: `<|user|>` / `<|observation|>`), that
token; the last turn of such a template gets it appended, as LLaMA-Factory does with stop words.
Nothing requires earlier turns to render the same once later turns are added, so templates that
strip reasoning from history, move the system prompt or add an eos at the end all work.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

log = logging.getLogger(__name__)

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
REASONING = ("keep", "strip", "empty")  # or None: what the template itself does

_NAMES: dict[str, str] = {}  # template source -> how the user chose it (for error messages)


def use_chat_template(tok: Any, chat_template: str | None) -> None:
    """Give `tok` the template the task asks for; keep the tokenizer's own when none is asked
    for; a tokenizer with neither is an error (a silent fallback would train on a format the
    model will never be prompted with)."""
    if chat_template:
        if chat_template in NAMED_TEMPLATES:
            tok.chat_template = NAMED_TEMPLATES[chat_template]
            _NAMES[tok.chat_template] = f"task.chat_template={chat_template}"
        elif "{{" in chat_template or "{%" in chat_template:
            tok.chat_template = chat_template
            _NAMES[tok.chat_template] = "task.chat_template=<the Jinja string given>"
        else:
            raise ConfigError("task.chat_template", chat_template,
                              f"one of {', '.join(NAMED_TEMPLATES)} or a Jinja template string")
    if not getattr(tok, "chat_template", None):
        raise ConfigError("task.chat_template", chat_template,
                          f"one of {', '.join(NAMED_TEMPLATES)} or a Jinja string",
                          "this tokenizer has no chat template (a base model): choose the format to train it on")


class TemplateSplitError(ConfigError):
    """A conversation whose assistant turns cannot be located in its rendering."""

    def __init__(self, template: str, reason: str) -> None:
        super().__init__("task.chat_template", template, "a template whose assistant turns can be located", reason)
        self.template, self.reason = template, reason


# --- sentinels -------------------------------------------------------------------------------
_OPEN, _CLOSE = "\ue000", "\ue001"
_FIRST_TAG, _LAST_TAG = 0xE100, 0xF8FF
_PRIVATE = re.compile("[\ue000-\uf8ff]")
_SENTINEL = re.compile("\ue000([\ue100-\uf8ff])|([\ue100-\uf8ff])\ue001")


def _wrap(text: str, tag: str) -> str:
    """`text` with its stripped core between sentinels (surrounding whitespace left outside, so
    templates that trim or strip see the same text)."""
    core = text.strip()
    if not core:
        return text
    lead = text[: len(text) - len(text.lstrip())]
    return f"{lead}{_OPEN}{tag}{core}{tag}{_CLOSE}{text[len(lead) + len(core):]}"


def _unwrap(rendered: str) -> tuple[str, dict[str, list[int]], dict[str, list[int]]]:
    """The rendering without sentinels, and where each tag opened and closed in it."""
    plain, opens, closes, pos = [], {}, {}, 0
    length = 0
    for m in _SENTINEL.finditer(rendered):
        piece = _PRIVATE.sub("", rendered[pos:m.start()])  # a tag whose other half the template cut off
        plain.append(piece)
        length += len(piece)
        if m.group(1):
            opens.setdefault(m.group(1), []).append(length)
        else:
            closes.setdefault(m.group(2), []).append(length)
        pos = m.end()
    plain.append(_PRIVATE.sub("", rendered[pos:]))
    return "".join(plain), opens, closes


# --- what a template does, found once per template -------------------------------------------
@dataclass(frozen=True)
class TemplateProfile:
    """How one template lays out turns, probed once with short conversations."""

    name: str
    headers: tuple[str, ...]  # the generation prompt and its prefixes, longest first
    end_markers: tuple[str, ...]  # what may end an assistant turn (first found wins)
    append_marker: str | None  # ends the final turn when the template writes nothing after it (GLM)
    folds_system: bool  # no system role: the system text goes into the first user turn
    reads_reasoning: bool  # the template renders `reasoning_content`
    generation_blocks: bool  # the template marks assistant text with {% generation %}
    render_kwargs: tuple[tuple[str, Any], ...]


_PROFILES: dict[tuple, TemplateProfile] = {}
_WARNED: set[tuple[str, str]] = set()


def _warn_once(profile: TemplateProfile, key: str, message: str) -> None:
    if (profile.name, key) not in _WARNED:
        _WARNED.add((profile.name, key))
        log.warning("%s: %s", profile.name, message)


def _source(tok: Any) -> str:
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if not template:
        raise ConfigError("task.chat_template", None, "a chat template", "this tokenizer has none")
    return template


def template_name(tok: Any) -> str:
    source = _source(tok)
    return _NAMES.get(source) or f"the chat template of {getattr(tok, 'name_or_path', '') or 'this tokenizer'}"


def _special_tokens(tok: Any) -> list[str]:
    specials = set(tok.all_special_tokens)
    specials.update(t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special)
    return sorted((s for s in specials if s), key=len, reverse=True)


def _first_special(text: str, specials: list[str]) -> str | None:
    best: tuple[int, int, str] | None = None
    for s in specials:
        at = text.find(s)
        if at >= 0 and (best is None or (at, -len(s)) < best[:2]):
            best = (at, -len(s), s)
    return best[2] if best else None


def _render(tok: Any, messages: list[dict[str, Any]], tools: Any = None, generation_prompt: bool = False,
            **kwargs: Any) -> str:
    return tok.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                   add_generation_prompt=generation_prompt, **kwargs)


def _header_cuts(prompt: str, specials: list[str]) -> tuple[str, ...]:
    """The generation prompt and its prefixes that end at a special token or a newline, longest
    first: history turns may show only the start of it (`<|im_start|>assistant\\n` without the
    `<think>\\n` a reasoning model's prompt adds)."""
    cuts = {len(prompt)}
    for s in specials:
        for m in re.finditer(re.escape(s), prompt):
            cuts.add(m.end())
    cuts.update(m.end() for m in re.finditer("\n+", prompt))
    return tuple(prompt[:c] for c in sorted(cuts, reverse=True) if c > 0)


def profile_of(tok: Any, reasoning: str | None = None) -> TemplateProfile:
    """The template's layout (cached per template, special tokens and reasoning mode)."""
    source = _source(tok)
    specials = _special_tokens(tok)
    name = template_name(tok)
    key = (source, name, tuple(specials), tok.bos_token, tok.eos_token, reasoning)
    if key in _PROFILES:
        return _PROFILES[key]
    kwargs = {"enable_thinking": False} if reasoning == "strip" else {}
    user = [{"role": "user", "content": "Q"}]
    try:
        bare, prompted = _render(tok, user, **kwargs), _render(tok, user, generation_prompt=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - a template error is the user's template; say which
        raise TemplateSplitError(name, f"the template fails on a one-turn conversation: {e}") from None
    # what add_generation_prompt appends; some templates end a prompt-less rendering with an eos
    # instead, so the prompt starts after the last newline or special token the two share
    shared = len(os.path.commonprefix([bare, prompted]))
    if shared < len(bare):
        shared = max([0] + [m.end() for m in re.finditer("\n", prompted[:shared])]
                     + [at + len(t) for t in specials if 0 <= (at := prompted.rfind(t, 0, shared)) <= shared - len(t)])
    generation_prompt = prompted[shared:]

    def probe(messages: list[dict[str, Any]]) -> tuple[str, dict, dict]:
        wrapped = [{**m, "content": _wrap(m["content"], chr(_FIRST_TAG + i))} for i, m in enumerate(messages)]
        return _unwrap(_render(tok, wrapped, **kwargs))

    system = {"role": "system", "content": "S"}
    turns = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
             {"role": "user", "content": "V"}, {"role": "assistant", "content": "B"}]
    try:
        _, opens, _ = probe([system, *turns[:2]])
        folds_system = chr(_FIRST_TAG) not in opens
    except Exception:  # noqa: BLE001 - templates refuse a system role by raising
        folds_system = True
    try:
        plain, opens, closes = probe(turns)
    except Exception as e:  # noqa: BLE001
        raise TemplateSplitError(name, f"the template fails on a two-exchange conversation: {e}") from None
    tag = [chr(_FIRST_TAG + i) for i in range(4)]
    if tag[1] not in closes or tag[3] not in closes:
        raise TemplateSplitError(name, "the template does not render the text of every assistant turn")
    after = min((opens[t][0] for t in tag[2:] if t in opens), default=len(plain))
    glue_mid, glue_final = plain[closes[tag[1]][0]:after], plain[closes[tag[3]][0]:]
    end_mid, end_final = _first_special(glue_mid, specials), _first_special(glue_final, specials)
    if end_mid is None and end_final is None:  # markers that are not special tokens (a named template on a base
        end_mid = end_final = os.path.commonprefix([glue_mid, glue_final]).strip() or None  # tokenizer)
    # a template that ignores add_generation_prompt (Mistral, Phi-4) heads an assistant turn with
    # whatever follows the user's text: the end of the user turn and any assistant header
    header = generation_prompt or (plain[closes[tag[0]][0]:opens[tag[1]][0]]
                                   if tag[0] in closes and tag[1] in opens else "")
    end_tool = None
    try:
        plain, opens, closes = probe([*turns[:2], {"role": "tool", "content": "T", "tool_call_id": "call00001",
                                                   "name": "f"}])
        if tag[1] in closes and tag[2] in opens:
            end_tool = _first_special(plain[closes[tag[1]][0]:opens[tag[2]][0]], specials)
    except Exception:  # noqa: BLE001 - a template without a tool role
        pass
    markers = tuple(dict.fromkeys(m for m in (end_mid, end_final, end_tool) if m))
    if not markers:
        raise TemplateSplitError(name, "the template writes no special token and no fixed text after an assistant "
                                       "turn, so the model could not learn where a turn ends")
    profile = TemplateProfile(
        name=name, headers=_header_cuts(header, specials) if header else (),
        end_markers=markers, append_marker=end_mid if end_final is None else None, folds_system=folds_system,
        reads_reasoning="reasoning_content" in source,
        generation_blocks=re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None,
        render_kwargs=tuple(kwargs.items()))
    _PROFILES[key] = profile
    return profile


def end_of_turn(tok: Any) -> str:
    """The marker that ends an assistant turn in this template (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`, `</s>`, GLM's next role token, ...): generation stops there."""
    return profile_of(tok).end_markers[0]


def end_of_turn_id(tok: Any) -> int | None:
    """The token id of the end-of-turn marker when it is a single token (the usual case)."""
    marker = end_of_turn(tok)
    ids = tok(marker, add_special_tokens=False)["input_ids"] if marker else []
    return ids[0] if len(ids) == 1 else None


# --- messages as the template should see them ------------------------------------------------
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def turn_reasoning(message: dict[str, Any]) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant turn: `reasoning_content`, or a leading inline
    `<think>...</think>` block of its content."""
    content = message.get("content") or ""
    inline = _THINK.match(content)
    answer = content[inline.end():] if inline else content
    reasoning = message.get("reasoning_content")
    if reasoning is None and inline:
        reasoning = inline.group(1).strip("\n")
    return reasoning, answer


def _with_reasoning(message: dict[str, Any], mode: str | None, profile: TemplateProfile) -> dict[str, Any]:
    reasoning, answer = turn_reasoning(message)
    out = {k: v for k, v in message.items() if k != "reasoning_content"}
    if mode is None:
        if profile.reads_reasoning and reasoning is not None:  # the template would split it out itself
            out.update(content=answer, reasoning_content=reasoning)
        elif not profile.reads_reasoning and message.get("reasoning_content"):
            _warn_once(profile, "ignored", "the template does not render reasoning_content, so it is not trained "
                                           "(task.reasoning=keep trains it as an inline <think> block)")
        else:
            out = dict(message)
        return out
    if mode == "strip" or (mode == "keep" and not reasoning):
        out["content"] = answer
    elif profile.reads_reasoning:
        out.update(content=answer, reasoning_content=reasoning if mode == "keep" else "")
    else:
        out["content"] = f"<think>\n{reasoning if mode == 'keep' else ''}\n</think>\n\n{answer}"
    return out


def prepare(messages: list[dict[str, Any]], profile: TemplateProfile, reasoning: str | None) -> list[dict[str, Any]]:
    """The messages the template renders: no None fields (a stored table fills absent keys with
    None, which templates read as present), reasoning per task.reasoning, and the system text
    folded into the first user turn where the template has no system role."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        m.setdefault("content", "")
        out.append(_with_reasoning(m, reasoning, profile) if m["role"] == "assistant" else m)
    if profile.folds_system and out and out[0]["role"] == "system":
        system, out = out[0]["content"], out[1:]
        first_user = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
        if first_user is not None:
            out[first_user] = {**out[first_user], "content": f"{system}\n\n{out[first_user]['content']}"}
        _warn_once(profile, "system", "the template renders no system turn in a conversation that ends with an answer "
                                      "(it has no system role, or places it only before a generation prompt): the "
                                      "system prompt is put at the start of the first user turn, as LLaMA-Factory does")
    return out


# --- one conversation: its text and where the loss looks --------------------------------------
@dataclass
class Located:
    text: str  # the rendering (plus an appended end marker for next-role templates)
    spans: list[tuple[int, int]]  # character span of each assistant turn, in order
    reasoning_dropped: bool = False  # a turn's reasoning that the template did not render


def _find_header(plain: str, profile: TemplateProfile, lo: int, hi: int) -> int | None:
    for header in profile.headers:
        at = plain.find(header, lo, hi)
        if at >= 0:
            return at + len(header)
    return None


def _find_marker(plain: str, profile: TemplateProfile, lo: int, hi: int) -> tuple[int, int] | None:
    """(start, end) of the first end marker in plain[lo:hi]."""
    found = [(at, at + len(m)) for m in profile.end_markers if 0 <= (at := plain.find(m, lo)) and at + len(m) <= hi]
    return min(found) if found else None


def locate(tok: Any, messages: list[dict[str, Any]], tools: Any, profile: TemplateProfile) -> Located:
    """Render `messages` (already prepared) once for real and once with sentinels; the character
    span of every assistant turn in the real rendering."""
    if profile.generation_blocks:
        return _locate_by_blocks(tok, messages, tools, profile)
    kwargs = dict(profile.render_kwargs)
    try:
        text = _render(tok, messages, tools, **kwargs)
    except Exception as e:  # noqa: BLE001 - the template's own refusal (roles, tool call ids, ...)
        raise TemplateSplitError(profile.name, f"the template fails on this conversation: {e}") from None
    fields: list[tuple[int, str]] = []
    wrapped = []
    for i, m in enumerate(messages):
        m = dict(m)
        for key in ("content", "reasoning_content"):
            if isinstance(m.get(key), str):
                if _PRIVATE.search(m[key]):
                    raise TemplateSplitError(profile.name, f"message {i} {key} holds private-use characters "
                                                           "(U+E000-U+F8FF), which locating turns relies on")
                if len(fields) > _LAST_TAG - _FIRST_TAG:
                    raise TemplateSplitError(profile.name, "more than 6000 text fields in one conversation")
                tag = chr(_FIRST_TAG + len(fields))
                fields.append((i, key))
                m[key] = _wrap(m[key], tag)
        wrapped.append(m)
    plain, opens, closes = _unwrap(_render(tok, wrapped, tools, **kwargs))
    if plain != text:
        raise TemplateSplitError(profile.name, "the template renders a turn differently depending on its text, so "
                                               "the turns cannot be located in the rendering")
    of_message: dict[int, list[str]] = {}
    for k, (i, _) in enumerate(fields):
        of_message.setdefault(i, []).append(chr(_FIRST_TAG + k))
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans, dropped = [], False
    for n, i in enumerate(assistants):
        own = of_message.get(i, [])
        if any(len(opens.get(t, [])) > 1 or len(closes.get(t, [])) > 1 for t in own):
            raise TemplateSplitError(profile.name, f"message {i} (assistant) appears more than once in the rendering")
        reasoning_tags = [t for t in own if fields[ord(t) - _FIRST_TAG][1] == "reasoning_content"]
        dropped = dropped or any(t not in closes for t in reasoning_tags)
        before = [closes[t][0] for j in range(i) for t in of_message.get(j, []) if t in closes]
        lo = max(before + [spans[-1][1] if spans else 0])
        own_opens = [opens[t][0] for t in own if t in opens]
        later = [opens[t][0] for j in range(i + 1, len(messages)) for t in of_message.get(j, []) if t in opens]
        hi = min(own_opens) if own_opens else min(later, default=len(plain))
        start = _find_header(plain, profile, lo, hi)
        if start is None:
            if not own_opens:
                raise TemplateSplitError(profile.name, f"message {i} (assistant) has no text and the template has no "
                                                       "generation prompt to find it by")
            start = min(own_opens)
        last = max([closes[t][0] for t in own if t in closes] + [start])
        limit = min([p for p in later if p >= last], default=len(plain))
        marker = _find_marker(plain, profile, last, limit)
        end = marker[1] if marker else None
        if end is None:
            if n == len(assistants) - 1 and profile.append_marker and not plain[last:].strip():
                text = plain + profile.append_marker
                end = len(text)
            else:
                raise TemplateSplitError(profile.name, f"no end-of-turn marker ({' / '.join(profile.end_markers)}) "
                                                       f"follows message {i} (assistant)")
        missing = [c for c in _call_names(messages[i]) if c not in text[start:end]]
        if missing:
            raise TemplateSplitError(profile.name, f"message {i} (assistant) calls {', '.join(missing)}, which the "
                                                   "template leaves out of its rendering (it renders no tool calls, "
                                                   "or none beside text)")
        spans.append((start, end))
    return Located(text, spans, dropped)


def _call_names(message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls") or []
    return [str((c.get("function") or c).get("name")) for c in calls if isinstance(c, dict)]


def _locate_by_blocks(tok: Any, messages: list[dict[str, Any]], tools: Any, profile: TemplateProfile) -> Located:
    """Spans from the template's own {% generation %} blocks, each carried through the end
    marker that follows it (after whitespace at most)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template([messages], tools=tools or None, chat_template=_source(tok),
                                              return_assistant_tokens_mask=True, **tok.special_tokens_map,
                                              **dict(profile.render_kwargs))
    text, blocks = rendered[0], sorted(indices[0])
    spans = []
    for n, (start, end) in enumerate(blocks):
        limit = blocks[n + 1][0] if n + 1 < len(blocks) else len(text)
        marker = _find_marker(text, profile, end, limit)
        if marker is not None and not text[end:marker[0]].strip():
            end = marker[1]
        spans.append((start, end))
    return Located(text, spans)


@dataclass
class EncodedConversation:
    """One conversation as the trainer sees it."""

    input_ids: list[int]
    labels: list[int]
    turn_starts: list[int]  # token index where each assistant turn starts


def _tokens_in(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[range]:
    """For each character span, the tokens that overlap it (offsets are in text order)."""
    starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
    return [range(bisect.bisect_right(ends, s), bisect.bisect_left(starts, e)) for s, e in spans]


def encode_turns(tok: Any, messages: list[dict[str, Any]], *, train_on: str = "assistant", tools: Any = None,
                 reasoning: str | None = None) -> EncodedConversation:
    """See `encode_conversation`; also says where each assistant turn starts."""
    if train_on not in TRAIN_ON:
        raise ConfigError("task.train_on", train_on, f"one of {', '.join(TRAIN_ON)}")
    if reasoning is not None and reasoning not in REASONING:
        raise ConfigError("task.reasoning", reasoning, f"null or one of {', '.join(REASONING)}")
    if not getattr(tok, "is_fast", False):
        raise ConfigError("model.name_or_path", getattr(tok, "name_or_path", None),
                          "a model with a fast tokenizer (tokenizer.json)",
                          "locating assistant turns needs the tokenizer's character offsets")
    profile = profile_of(tok, reasoning)
    prepared = prepare(messages, profile, reasoning)
    located = locate(tok, prepared, tools, profile)
    if located.reasoning_dropped and reasoning == "keep":
        _warn_once(profile, "dropped", "the template leaves out the reasoning of some turns (typically those "
                                       "before the last user message), so only the reasoning it renders is trained")
    enc = tok(located.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    per_turn = _tokens_in(enc["offset_mapping"], located.spans)
    labels = list(ids) if train_on == "all" else [-100] * len(ids)
    if train_on != "all":
        for k, tokens in enumerate(per_turn):
            if train_on == "assistant" or k == len(per_turn) - 1:
                for t in tokens:
                    labels[t] = ids[t]
    return EncodedConversation(ids, labels, [tokens[0] if tokens else len(ids) for tokens in per_turn])


def encode_conversation(tokenizer: Any, messages: list[dict[str, Any]], *, train_on: str = "assistant",
                        tools: Any = None, reasoning: str | None = None) -> tuple[list[int], list[int]]:
    """One conversation as the trainer sees it: its token ids as the chat template renders it
    for inference, and labels that are -100 wherever the loss does not look (`train_on`:
    assistant = every assistant turn with its end-of-turn marker, last_assistant = the last
    one, all = every token). `tools` are the JSON schemas the template is given; `reasoning`
    is task.reasoning (keep | strip | empty, None = the template's own handling)."""
    enc = encode_turns(tokenizer, messages, train_on=train_on, tools=tools, reasoning=reasoning)
    return enc.input_ids, enc.labels
