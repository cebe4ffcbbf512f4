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
from trainer.data.chat_templates import end_of_turn, end_of_turn_id

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
    strip_last_prefix: str = ""  # last_prefix under reasoning=strip (a template that always opens a think block)
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
    "qwen3-2507": Family("Qwen-Qwen3-4B-Thinking-2507.jinja", (*CHATML, "<|endoftext|>"), None, "<|im_end|>",
                         "<|im_end|>", "qwen3", last_prefix="\n</think>\n\n", strip_last_prefix="\n</think>\n\n",
                         words=tuple(QWEN_TAGS)),
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
    "phi-4-mini": Family("microsoft-Phi-4-mini-instruct.jinja", (*PHI3, "<|tool|>", "<|/tool|>"), None,
                         "<|endoftext|>", "<|end|>", "phi3"),
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
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=360, special_tokens=specials, show_progress=False,
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
    prefix, last_prefix = (fam.turn_prefix, fam.last_prefix) if template_default else ("", fam.strip_last_prefix)
    ends = [fam.end] * (len(answers) - 1) + [fam.final_end or fam.end]
    return [prefix + (last_prefix if i == len(answers) - 1 else "") + a + e for i, (a, e) in enumerate(zip(answers, ends))]


@pytest.mark.parametrize("system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("reasoning", [None, "strip"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_loss_sees_each_assistant_answer_and_its_end_of_turn_marker(name, reasoning, system):
    fam, tok = FAMILIES[name], family_tokenizer(name)
    conversation = CONVERSATION if system else CONVERSATION[1:]
    ids, labels = encode_conversation(tok, conversation, reasoning=reasoning)
    runs = trained_runs(ids, labels, tok)
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert [r.lstrip(" \n") for r in runs] == [r.lstrip(" \n") for r in expected_runs(fam, answers, reasoning is None)], \
        tok.decode(ids)
    assert ("reply with just the answer." in tok.decode(ids)) == system  # the system prompt is in the prompt


def _tiny_model(arch: str, tok):
    """A 1-2 layer random model of the family's architecture, hidden 32, sized to the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    size = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    extra = {
        "deepseek_v2": dict(num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=8,
                            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
                            n_shared_experts=1),
        "deepseek_v3": dict(num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=8,
                            head_dim=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                            first_k_dense_replace=1, n_shared_experts=1, n_group=1, topk_group=1),
        "granitemoehybrid": dict(layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                                 mamba_n_groups=1, mamba_expand=2, num_local_experts=0, shared_intermediate_size=64),
        "gemma4_text": dict(layer_types=["sliding_attention", "full_attention"], sliding_window=64, global_head_dim=16,
                            hidden_size_per_layer_input=8, vocab_size_per_layer_input=len(tok)),
    }
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, **{**size, **extra.get(arch, {})})
    return AutoModelForCausalLM.from_config(config).eval()


SHORT = [{"role": "user", "content": "what is 2 plus 3?"}, {"role": "assistant", "content": "5"}]


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.arch])
def test_a_tiny_model_of_the_family_takes_the_encoded_batch(name, torch_single_thread):
    """The padded batch goes through the family's architecture, and its loss is the mean cross-entropy
    of exactly the trained tokens (labels line up with the tokens the model must predict)."""
    import torch
    import torch.nn.functional as F

    from trainer.data.encoding import make_collator

    tok = family_tokenizer(name)
    rows = []
    for conversation in (CONVERSATION, SHORT):
        ids, labels = encode_conversation(tok, conversation)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    batch = make_collator(tok, "sft")(rows)
    model = _tiny_model(FAMILIES[name].arch, tok)
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, manual, atol=1e-4)
    assert int((labels != -100).sum()) == sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _call(city: str, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


TOOL_CONVERSATION = [
    {"role": "system", "content": "reply with just the answer."},
    {"role": "user", "content": "what is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("Paris", "call00001")]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call00001", "name": "get_weather"},
    {"role": "assistant", "content": "it is sunny in Paris."},
    {"role": "user", "content": "and in Rome?"},
    {"role": "assistant", "content": "checking Rome.", "tool_calls": [_call("Rome", "call00002")]},
    {"role": "tool", "content": "rainy", "tool_call_id": "call00002", "name": "get_weather"},
    {"role": "assistant", "content": "it is rainy in Rome."},
]


@pytest.mark.parametrize("name, expected", [
    ("qwen2.5", ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                 "it is sunny in Paris.<|im_end|>",
                 'checking Rome.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
                 "<|im_end|>",
                 "it is rainy in Rome.<|im_end|>"]),
    ("qwen3", ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
               "it is sunny in Paris.<|im_end|>",
               'checking Rome.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
               "<|im_end|>",
               "<think>\n\n</think>\n\nit is rainy in Rome.<|im_end|>"]),
    # Llama 3.1 writes a call as JSON with "parameters" and leaves out the text beside it (its template's choice)
    ("llama-3.1", ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
                   "it is sunny in Paris.<|eot_id|>",
                   '{"name": "get_weather", "parameters": {"city": "Rome"}}<|eot_id|>',
                   "it is rainy in Rome.<|eot_id|>"]),
])
def test_tool_calls_are_in_the_loss_and_tool_results_are_not(name, expected):
    tok = family_tokenizer(name)
    ids, labels = encode_conversation(tok, TOOL_CONVERSATION, tools=TOOLS)
    text = tok.decode(ids)
    assert "get_weather" in text.split("what is the weather")[0]  # the tool schemas are in the prompt
    assert "sunny" in text and "rainy" in text  # the tool results are in the prompt ...
    assert trained_runs(ids, labels, tok) == expected  # ... and out of the loss


@pytest.mark.parametrize("name", ["qwen3.5", "qwq", "mistral-v0.3", "mistral-nemo", "ministral-3", "olmo-3",
                                  "granite-4.0", "deepseek-v3.1"])
def test_other_tool_calling_templates_train_the_calls_and_not_the_results(name):
    tok = family_tokenizer(name)
    ids, labels = encode_conversation(tok, TOOL_CONVERSATION, tools=TOOLS)
    runs = trained_runs(ids, labels, tok)
    assert len(runs) == 4 and "Paris" in runs[0] and "Rome" in runs[2] and "get_weather" in runs[0] + runs[2]
    assert runs[1].endswith("it is sunny in Paris." + FAMILIES[name].end)
    assert not any("sunny" in r and "Paris." not in r or "rainy" in r and "Rome." not in r for r in runs)


@pytest.mark.parametrize("name", ["phi-3.5", "gemma-2"])
def test_a_template_that_cannot_render_the_tool_conversation_is_refused_with_the_reason(name):
    from trainer.data.chat_templates import TemplateSplitError

    with pytest.raises(TemplateSplitError, match=f"the chat template of {name}' .*(calls get_weather|roles must alt)"):
        encode_conversation(family_tokenizer(name), TOOL_CONVERSATION, tools=TOOLS)


def test_glm_ends_each_turn_with_the_next_role_token_and_the_last_with_the_user_token():
    tok = family_tokenizer("glm-4.5")
    ids, labels = encode_conversation(tok, TOOL_CONVERSATION, tools=TOOLS)
    runs = trained_runs(ids, labels, tok)
    assert [r.rsplit("<", 1)[-1] for r in runs] == ["|observation|>", "|user|>", "|observation|>", "|user|>"]
    assert runs[0] == ("\n<think></think>\n<tool_call>get_weather<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>"
                       "</tool_call><|observation|>")
    assert tok.decode(ids).endswith("it is rainy in Rome.<|user|>")  # appended: the model learns to stop
    assert end_of_turn(tok) == "<|user|>" and end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|user|>")


REASONING_CONVERSATION = [
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "5", "reasoning_content": "2 and 3 make 5."},
    {"role": "user", "content": "and that plus 4?"},
    {"role": "assistant", "content": "<think>\n5 and 4 make 9.\n</think>\n\n9"},  # inline reasoning
]


@pytest.mark.parametrize("reasoning, expected", [
    (None, ["5<|im_end|>", "<think>\n5 and 4 make 9.\n</think>\n\n9<|im_end|>"]),
    ("keep", ["5<|im_end|>", "<think>\n5 and 4 make 9.\n</think>\n\n9<|im_end|>"]),
    ("strip", ["5<|im_end|>", "9<|im_end|>"]),
    ("empty", ["5<|im_end|>", "<think>\n\n</think>\n\n9<|im_end|>"]),
])
def test_reasoning_is_kept_stripped_or_emptied_on_qwen3(reasoning, expected, caplog):
    tok = family_tokenizer("qwen3")
    tok.name_or_path = f"qwen3 (reasoning={reasoning})"  # a name of its own: warnings are once per template
    try:
        with caplog.at_level(logging.WARNING, logger="trainer.data.chat_templates"):
            ids, labels = encode_conversation(tok, REASONING_CONVERSATION, reasoning=reasoning)
    finally:
        tok.name_or_path = "qwen3"
    assert trained_runs(ids, labels, tok) == expected
    text = tok.decode(ids)
    assert "2 and 3 make 5." not in text  # Qwen3 renders no reasoning before the last user turn
    if reasoning == "strip":  # the prompt is inference's with enable_thinking=false: the empty block is given
        assert "<|im_start|>assistant\n<think>\n\n</think>\n\n9" in text
    if reasoning == "keep":  # the user is told that the first turn's reasoning is not trained
        assert any("leaves out the reasoning" in r.getMessage() for r in caplog.records)


def test_reasoning_keep_on_a_template_without_reasoning_trains_an_inline_think_block():
    tok = family_tokenizer("llama-3.2")
    ids, labels = encode_conversation(tok, REASONING_CONVERSATION, reasoning="keep")
    assert trained_runs(ids, labels, tok) == ["<think>\n2 and 3 make 5.\n</think>\n\n5<|eot_id|>",
                                              "<think>\n5 and 4 make 9.\n</think>\n\n9<|eot_id|>"]
    ids, labels = encode_conversation(tok, REASONING_CONVERSATION, reasoning="strip")
    assert trained_runs(ids, labels, tok) == ["5<|eot_id|>", "9<|eot_id|>"]


def test_gemma_folds_the_system_prompt_into_the_first_user_turn_and_says_so_once(caplog):
    tok = family_tokenizer("gemma-2")
    tok.name_or_path = "gemma-2 (fold test)"  # a name of its own: the warning is once per template
    try:
        with caplog.at_level(logging.WARNING, logger="trainer.data.chat_templates"):
            for _ in range(2):
                ids, labels = encode_conversation(tok, CONVERSATION)
    finally:
        tok.name_or_path = "gemma-2"
    assert tok.decode(ids).startswith("<bos><start_of_turn>user\nreply with just the answer.\n\nwhat is 2 plus 3?")
    folds = [r for r in caplog.records if "start of the first user turn" in r.getMessage()]
    assert len(folds) == 1 and "gemma-2 (fold test)" in folds[0].getMessage()


def test_train_on_last_assistant_and_all():
    tok = family_tokenizer("qwen2.5")
    ids, labels = encode_conversation(tok, CONVERSATION, train_on="last_assistant")
    assert trained_runs(ids, labels, tok) == ["blue red<|im_end|>"]
    ids, labels = encode_conversation(tok, CONVERSATION, train_on="all")
    assert labels == ids


def test_generation_blocks_of_a_template_give_the_spans():
    """A template that marks assistant text with {% generation %} is split by those marks; the end
    marker after a block is trained too."""
    tok = family_tokenizer("qwen2.5")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
                         "{% generation %}{{ m.content }}{% endgeneration %}<|im_end|>\n{% else %}{{ m.content }}"
                         "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                         "{% endif %}")
    try:
        ids, labels = encode_conversation(tok, CONVERSATION)
    finally:
        tok.chat_template = (TEMPLATES / FAMILIES["qwen2.5"].template).read_text()
    assert trained_runs(ids, labels, tok) == ["5<|im_end|>", "9<|im_end|>", "blue red<|im_end|>"]


def test_end_of_turn_is_the_marker_of_each_family():
    assert {name: end_of_turn(family_tokenizer(name)) for name in FAMILIES} == \
        {name: fam.end for name, fam in FAMILIES.items()}
    assert all(end_of_turn_id(family_tokenizer(name)) is not None for name in FAMILIES)
