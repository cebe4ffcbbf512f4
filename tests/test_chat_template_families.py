"""The chat templates of the models people fine-tune, each the real Jinja file (tests/chat_templates/,
copied from llama.cpp's models/templates and the model repositories), on a byte-level BPE trained
here with the family's special tokens: the loss sees exactly the assistant turns and the marker
that ends each one, whatever the template does with history, system prompts, reasoning or tools."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from trainer import encode_conversation
from trainer.chat_templates import end_of_turn, end_of_turn_id

TEMPLATES = Path(__file__).parent / "chat_templates"
CHATML = ["<|im_start|>", "<|im_end|>"]
LLAMA3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
            "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
MISTRAL = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[THINK]", "[/THINK]", "[ARGS]"]
PHI3 = ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
GEMMA = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
GEMMA4 = ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
          "<|tool_response>", "<tool_response|>", "<|tool>", "<tool|>", "<|think|>", '<|"|>']
GRANITE = ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"]
GLM = ["[gMASK]", "<sop>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
QWEN_TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass(frozen=True)
class Family:
    template: str  # file under tests/chat_templates
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    end: str  # the end-of-turn marker each assistant turn is trained to emit
    arch: str | None = None  # transformers model type of a tiny model, where there is one
    last_prefix: str = ""  # what the template itself puts before the last answer (an empty think block)
    turn_prefix: str = ""  # what the template puts before every answer
    final_end: str | None = None  # the marker after the last turn when it differs (an extra eos)
    words: tuple[str, ...] = field(default=())  # non-special added tokens (tool and think tags)


FAMILIES = {
    "llama-3.1": Family("meta-llama-Llama-3.1-8B-Instruct.jinja", tuple(LLAMA3), "<|begin_of_text|>", "<|eot_id|>",
                        "<|eot_id|>", "llama"),
    "llama-3.2": Family("meta-llama-Llama-3.2-3B-Instruct.jinja", tuple(LLAMA3), "<|begin_of_text|>", "<|eot_id|>",
                        "<|eot_id|>", "llama"),
    "llama-3.3": Family("meta-llama-Llama-3.3-70B-Instruct.jinja", tuple(LLAMA3), "<|begin_of_text|>", "<|eot_id|>",
                        "<|eot_id|>", "llama"),
    "qwen2.5": Family("Qwen-Qwen2.5-7B-Instruct.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>", "<|im_end|>",
                      "qwen2", words=tuple(QWEN_TAGS)),
    "qwen3": Family("Qwen-Qwen3-0.6B.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>", "<|im_end|>", "qwen3",
                    last_prefix="<think>\n\n</think>\n\n", words=tuple(QWEN_TAGS)),
    "qwen3.5": Family("Qwen3.5-4B.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>", "<|im_end|>", "qwen3",
                      last_prefix="\n</think>\n\n", words=tuple(QWEN_TAGS)),
    "qwq": Family("Qwen-QwQ-32B.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>", "<|im_end|>", "qwen2",
                  words=tuple(QWEN_TAGS)),
    "deepseek-r1-distill-qwen": Family("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", tuple(DEEPSEEK),
                                       "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                       "qwen2", words=("<think>", "</think>")),
    "deepseek-r1-distill-llama": Family("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", tuple(DEEPSEEK),
                                        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                        "llama", words=("<think>", "</think>")),
    "gemma-2": Family("google-gemma-2-2b-it.jinja", tuple(GEMMA), "<bos>", "<eos>", "<end_of_turn>", "gemma2"),
    "gemma-3": Family("google-gemma-3-4b-it.jinja", tuple(GEMMA), "<bos>", "<eos>", "<end_of_turn>", "gemma3_text"),
    "gemma-4": Family("google-gemma-4-31B-it.jinja", tuple(GEMMA4), "<bos>", "<eos>", "<turn|>", "gemma4_text"),
    "mistral-v0.3": Family("mistralai-Mistral-7B-Instruct-v0.3.jinja", tuple(MISTRAL), "<s>", "</s>", "</s>", "mistral"),
    "mistral-nemo": Family("mistralai-Mistral-Nemo-Instruct-2407.jinja", tuple(MISTRAL), "<s>", "</s>", "</s>",
                           "mistral"),
    "ministral-3": Family("mistralai-Ministral-3-14B-Reasoning-2512.jinja", tuple(MISTRAL), "<s>", "</s>", "</s>",
                          "ministral3"),
    "phi-3": Family("microsoft-Phi-3-mini-4k-instruct.jinja", tuple(PHI3), "<s>", "<|endoftext|>", "<|end|>", "phi3"),
    "phi-3.5": Family("microsoft-Phi-3.5-mini-instruct.jinja", tuple(PHI3), "<s>", "<|endoftext|>", "<|end|>", "phi3"),
    "phi-4": Family("microsoft-phi-4.jinja", ("<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|endoftext|>"), None,
                    "<|im_end|>", "<|im_end|>", "phi3"),
    "smollm2": Family("HuggingFaceTB-SmolLM2-1.7B-Instruct.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>",
                      "<|im_end|>", "llama"),
    "smollm3": Family("HuggingFaceTB-SmolLM3-3B.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>", "<|im_end|>",
                      "smollm3", words=("<think>", "</think>")),
    "olmo-3": Family("allenai-Olmo-3.1-32B-Instruct.jinja", (*CHATML, "<|endoftext|>"), None, "<|endoftext|>",
                     "<|im_end|>", "olmo3", final_end="<|endoftext|>"),
    "glm-4.5": Family("zai-org-GLM-4.5.jinja", tuple(GLM), None, "<|endoftext|>", "<|user|>", "glm4",
                      turn_prefix="\n<think></think>\n", words=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
                             "</tool_response>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")),
    "granite-3.0": Family("ibm-granite-granite-3.0-8b-instruct.jinja", tuple(GRANITE), None, "<|end_of_text|>",
                          "<|end_of_text|>", "granite"),
    "granite-3.3": Family("ibm-granite-granite-3.3-2B-Instruct.jinja", tuple(GRANITE), None, "<|end_of_text|>",
                          "<|end_of_text|>", "granite"),
    "granite-4.0": Family("ibm-granite-granite-4.0.jinja", tuple(GRANITE), None, "<|end_of_text|>",
                          "<|end_of_text|>", "granitemoehybrid"),
    "deepseek-v2": Family("deepseek-ai-DeepSeek-V2-Lite-Chat.jinja", tuple(DEEPSEEK), "<｜begin▁of▁sentence｜>",
                          "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "deepseek_v2"),
    "deepseek-v3.1": Family("deepseek-ai-DeepSeek-V3.1.jinja", tuple(DEEPSEEK), "<｜begin▁of▁sentence｜>",
                            "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "deepseek_v3",
                            words=("<think>", "</think>")),
}

CONVERSATION = [
    {"role": "system", "content": "reply with just the answer."},
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and that plus 4?"},
    {"role": "assistant", "content": "9"},
    {"role": "user", "content": "reverse the list: red blue"},
    {"role": "assistant", "content": "blue red"},
]
CORPUS = [m["content"] for m in CONVERSATION] + ["system user assistant model tool get_weather city Paris sunny",
                                                  '{"name": "arguments": "city": "Paris"} weather in Paris is sunny']


@cache
def family_tokenizer(name: str):
    """A byte-level BPE (real merges, learnt from the test's text) with the family's special
    tokens, bos/eos and its real chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[name]
    specials = list(dict.fromkeys(["<unk>", *fam.specials, fam.eos, *([fam.bos] if fam.bos else [])]))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=360, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken(w, special=False, normalized=False) for w in fam.words])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fam.bos, eos_token=fam.eos, unk_token="<unk>",
                                   pad_token=fam.eos, additional_special_tokens=[s for s in specials if s != "<unk>"])
    fast.chat_template = (TEMPLATES / fam.template).read_text()
    fast.name_or_path = name
    return fast


def trained_runs(ids: list[int], labels: list[int], tok) -> list[str]:
    """The decoded runs of consecutive tokens the loss sees."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def expected_runs(fam: Family, answers: list[str], template_default: bool) -> list[str]:
    """Each answer with its end marker; with the template's default reasoning handling, plus the
    think block the template itself writes where inference's generation prompt leaves it to the
    model (with task.reasoning=strip the prompt carries that block, so it is not trained)."""
    prefix, last_prefix = (fam.turn_prefix, fam.last_prefix) if template_default else ("", "")
    ends = [fam.end] * (len(answers) - 1) + [fam.final_end or fam.end]
    return [prefix + (last_prefix if i == len(answers) - 1 else "") + a + e for i, (a, e) in enumerate(zip(answers, ends))]


@pytest.mark.parametrize("reasoning", [None, "strip"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_loss_sees_each_assistant_answer_and_its_end_of_turn_marker(name, reasoning):
    fam, tok = FAMILIES[name], family_tokenizer(name)
    ids, labels = encode_conversation(tok, CONVERSATION, reasoning=reasoning)
    runs = trained_runs(ids, labels, tok)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert [r.lstrip(" \n") for r in runs] == [r.lstrip(" \n") for r in expected_runs(fam, answers, reasoning is None)], \
        tok.decode(ids)
    assert "reply with just the answer." in tok.decode(ids)  # the system prompt is in the prompt
