"""task=sft brings LLM defaults as explicit `auto` values (learning rate from the model's width,
max_seq_length from the data, bf16 and gradient checkpointing where the device has them,
max_new_tokens from the reference answers, the direction from the metric), resolved once at the
pre-flight into the numbers every trial is composed with; anything set explicitly wins, and the
classification defaults are untouched. Generation is greedy under its own GenerationConfig and
counts the answers that hit max_new_tokens."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweep_helpers import run_sweep
from trainer.errors import ConfigError
from trainer.llm_defaults import LENGTH_STEP, answer_token_limit, length_limit, quantile

REPO = Path(__file__).resolve().parents[1]
CHAT = ["task=sft", "data=demo_chat", "data.demo_train_size=120", "data.demo_eval_size=12", "quant=none"]


def compose(*overrides: str):
    """The job config `python sweep.py` composes (Hydra, so task=sft's defaults list applies)."""
    from sweeps.runtime.compose import ComposeSpec, compose_job

    return compose_job(ComposeSpec(str(REPO / "conf"), "sweep", tuple(overrides)), {})


# -- the rules ------------------------------------------------------------------------------------

def test_max_seq_length_covers_99_percent_of_a_realistic_length_spread():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(math.log(250), 0.6)) + 8 for _ in range(5000)]  # median ~250 tokens
    limit = length_limit(lengths, max_positions=131072)
    assert limit % LENGTH_STEP == 0
    assert sum(n <= limit for n in lengths) >= 0.99 * len(lengths)  # 99% fit whole
    assert sum(n <= limit - LENGTH_STEP for n in lengths) < 0.99 * len(lengths)  # and no step less would do
    assert quantile(lengths, 0.99) <= limit < quantile(lengths, 0.99) + LENGTH_STEP
    assert length_limit(lengths, max_positions=512) == 512  # the model's positions cap it
    assert length_limit([10_000] * 10, max_positions=0) == 4096  # and the cap
    assert length_limit([5, 9, 12]) == LENGTH_STEP  # short data: one step


def test_max_new_tokens_leaves_a_margin_over_the_longest_reference():
    assert answer_token_limit([3, 40, 12], max_seq_length=512) == 58  # 40 x 1.25 + 8
    assert answer_token_limit([3, 400], max_seq_length=256) == 256  # never over the training length


# -- composition ------------------------------------------------------------------------------------

def test_task_sft_composes_auto_and_classification_keeps_its_defaults():
    sft = compose(*CHAT)
    for key in ("train.learning_rate", "train.max_seq_length", "train.precision", "train.gradient_checkpointing",
                "task.max_new_tokens", "task.direction"):
        assert OmegaConf.select(sft, key) == "auto", key
    classification = compose()
    assert OmegaConf.to_container(classification.train) == OmegaConf.to_container(
        OmegaConf.load(REPO / "conf/train/default.yaml"))
    assert OmegaConf.to_container(classification.task) == OmegaConf.to_container(
        OmegaConf.load(REPO / "conf/task/classification.yaml"))
    explicit = compose(*CHAT, "train.learning_rate=2e-4", "train.max_seq_length=128", "train.precision=fp32",
                       "task.max_new_tokens=7")
    assert (explicit.train.learning_rate, explicit.train.max_seq_length, explicit.train.precision,
            explicit.task.max_new_tokens) == (2e-4, 128, "fp32", 7)


def test_the_direction_follows_the_metric_unless_set():
    import trainer
    from trainer.validation import task_direction

    for metric, direction in (("exact_match", "maximize"), ("token_f1", "maximize"), ("perplexity", "minimize")):
        cfg = compose(*CHAT, f"task.metric={metric}")
        trainer.validate_config(cfg)  # no need to also set task.direction
        assert task_direction(cfg.task) == direction
    trainer.validate_config(compose(*CHAT, "task.metric=exact_match", "task.direction=maximize"))
    with pytest.raises(ConfigError, match="task.direction.*maximize for task.metric=exact_match"):
        trainer.validate_config(compose(*CHAT, "task.metric=exact_match", "task.direction=minimize"))


def test_auto_where_it_cannot_be_resolved_is_refused_by_name():
    import trainer

    with pytest.raises(ConfigError, match=r"train.max_seq_length.*task=sft only"):
        trainer.validate_config(compose("train.max_seq_length=auto"))
    with pytest.raises(ConfigError, match=r"train.learning_rate.*auto"):
        trainer.validate_config(compose(*CHAT, "train.learning_rate=fast"))


# -- resolution at the pre-flight -------------------------------------------------------------------

def test_the_preflight_resolves_them_from_model_data_and_device(tiny_chat_llama_dir):
    import trainer
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode
    from trainer.evaluation.scoring import answer_prompts
    from trainer.models.loading import load_tokenizer

    cfg = compose(*CHAT, f"model.name_or_path={tiny_chat_llama_dir}")
    report = trainer.preflight(cfg)
    values = report.llm_defaults.values
    assert values["train.learning_rate"] == 3e-3  # hidden 32: the prior's cap (trainer/lr_prior.py)
    assert values["train.precision"] == "fp32" and values["train.gradient_checkpointing"] is False  # CPU
    assert values["task.direction"] == "minimize"  # task.metric=loss
    lines = "\n".join(report.llm_defaults.lines())
    assert "train.learning_rate = 0.003  (LoRA rate for hidden size 32)" in lines and "p99 of 120 train" in lines

    # the trainer's own encoding, untruncated: the limit holds 99% of the conversations whole
    tok = load_tokenizer(cfg.model, cfg.task)
    full = encode(load_raw(cfg.data, "sft"), tok, cfg.data, {"type": "sft"}, 100_000)
    train_lengths = [len(f["input_ids"]) for f in full.train.features]
    limit = values["train.max_seq_length"]
    assert limit % 64 == 0 and limit <= 256  # the tiny model's max_position_embeddings
    assert sum(n <= limit for n in train_lengths) >= 0.99 * len(train_lengths)
    assert limit - 64 < quantile(train_lengths, 0.99)
    answers = [len(a) for a in answer_prompts(full)[1]]  # each eval row's last assistant turn
    # the template's line break after its end-of-turn marker counts too: up to 2 tokens more than the span
    assert max(answers) < values["task.max_new_tokens"] <= math.ceil((max(answers) + 2) * 1.25) + 8

    resolved = report.llm_defaults.apply(cfg)
    assert report.estimate_memory_mb(cfg, device="cpu") == report.estimate_memory_mb(resolved, device="cpu")
    _, _, train = trainer.validate_config(resolved)  # the numbers pass the ordinary checks
    assert (train.learning_rate, train.max_seq_length, train.precision) == (3e-3, limit, "fp32")
    assert trainer.preflight(resolved).llm_defaults.values == {}  # nothing left to resolve


def test_every_trial_is_composed_with_the_numbers_and_the_space_keeps_its_keys(tiny_chat_llama_dir):
    import trainer
    from sweeps.preflight import with_resolved_defaults
    from sweeps.runtime.compose import ComposeSpec, compose_job
    from sweeps.search.space import parse_search_space

    overrides = (*CHAT, f"model.name_or_path={tiny_chat_llama_dir}")
    job = compose(*overrides)
    defaults = trainer.preflight(job).llm_defaults
    space = parse_search_space({"train.learning_rate": "tag(log, interval(1e-4, 5e-4))"}, [])
    spec = ComposeSpec(str(REPO / "conf"), "sweep", overrides)
    job, spec, _ = with_resolved_defaults(job, space, spec, lambda p: job, defaults)
    trial = compose_job(spec, {"train.learning_rate": 2.5e-4})
    assert trial.train.learning_rate == 2.5e-4  # the sampled value, not the default
    for key in ("train.max_seq_length", "train.precision", "train.gradient_checkpointing", "task.max_new_tokens",
                "task.direction"):
        assert OmegaConf.select(trial, key) == defaults.values[key] == OmegaConf.select(job, key), key
    assert not any(o.startswith("train.learning_rate=") for o in spec.overrides)
    assert job.train.learning_rate == 3e-3  # the base config (include_base) trains with the default


def test_a_dry_run_prints_the_resolved_defaults(tmp_path, tiny_chat_llama_dir):
    proc = run_sweep(tmp_path, *CHAT, f"model.name_or_path={tiny_chat_llama_dir}", "search_space=llm",
                     "hydra.sweeper.dry_run=true")
    out = proc.stdout
    assert "LLM defaults" in out, out[-3000:]
    for line in ("train.learning_rate = 0.003", "train.precision = fp32", "train.gradient_checkpointing = false",
                 "task.direction = minimize", "train.max_seq_length = ", "task.max_new_tokens = "):
        assert line in out, line
    assert "sft: learning rate 0.003, max_new_tokens " in out


# -- generation ----------------------------------------------------------------------------------

def _chat_prompts(tok, n: int = 6) -> list[list[int]]:
    from trainer.data.demo_chat import demo_chat_splits

    train, _ = demo_chat_splits(n, 2)
    return [tok(tok.apply_chat_template(c[:-1], add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"] for c in train]


def test_generation_is_greedy_whatever_the_models_generation_config_says(tiny_chat_llama_dir, torch_single_thread):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.evaluation.generation import generate_replies

    tok = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir)
    prompts = _chat_prompts(tok)
    plain = generate_replies(model, tok, prompts, 12, 3, torch.device("cpu"), end_of_turn="<|im_end|>")
    config = model.generation_config  # what an instruct model ships (Qwen2.5: repetition_penalty 1.05)
    config.repetition_penalty, config.no_repeat_ngram_size, config.do_sample, config.temperature = 4.0, 1, True, 5.0
    config.suppress_tokens = [int(t) for t in torch.tensor(prompts[0]).unique()]
    torch.manual_seed(0)
    theirs = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=12)[0, len(prompts[0]):].tolist()
    ours_ids = tok(plain[0].text, add_special_tokens=False)["input_ids"]
    assert theirs[: len(ours_ids)] != ours_ids  # those settings do change what generate() writes
    assert generate_replies(model, tok, prompts, 12, 3, torch.device("cpu"), end_of_turn="<|im_end|>") == plain
    assert config.repetition_penalty == 4.0  # and the model's own config is left as it was


def test_answers_that_hit_max_new_tokens_are_counted(tiny_chat_llama_dir, torch_single_thread):
    """Checked against a plain argmax loop: a reply is capped when none of its tokens is a stop id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.evaluation.generation import generate_replies, stop_ids

    tok = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir).eval()
    with torch.no_grad():  # make <|im_end|> likely after a few tokens, so some replies end and some do not
        model.lm_head.weight[tok.convert_tokens_to_ids("<|im_end|>")] *= 6
    prompts = _chat_prompts(tok, 12)
    stops = stop_ids(model, tok, "<|im_end|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops and tok.eos_token_id in stops
    replies = generate_replies(model, tok, prompts, 3, 4, torch.device("cpu"), end_of_turn="<|im_end|>")
    expected = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(3):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        expected.append(not any(t in stops for t in ids[len(prompt):]))
    assert [r.capped for r in replies] == expected
    assert 0 < sum(expected) < len(expected), "the check needs replies of both kinds"
