"""train.packing: packed rows give each conversation exactly the loss it has alone (tiny Llama
and Qwen2, eager and sdpa), no conversation sees another, the step's gradient is the unpacked
step's, and a packed trial runs end to end on demo_chat with far less padding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import chat_tokenizer, compose_cfg
from test_grad_accum import EXACT, GradientTap

from trainer import ConfigError, RecordingReporter, run_trial, validate_config
from trainer.data.packing import check_block_attention, first_fit_decreasing, pack_features, packed_collator

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MAX_LEN = 128


@pytest.fixture(scope="session")
def tiny_chat_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer Qwen2 (biased q/k/v, grouped-query attention) with the chatml byte-level BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny_chat_qwen2")
    chat_tokenizer(path)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, tie_word_embeddings=False)
    Qwen2Config(**shape).save_pretrained(path)  # next to a qwen2 config the tokenizer loads as Qwen2Tokenizer,
    tok = AutoTokenizer.from_pretrained(path)  # which adds its <|endoftext|> pad token
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def encoded_demo_chat(model_dir: Path, n: int) -> tuple[list[dict], object]:
    """The first n demo_chat training conversations as the trainer encodes them, and the tokenizer."""
    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode
    from trainer.models.loading import load_tokenizer

    cfg = compose_cfg(["model=custom", f"model.name_or_path={model_dir}", "task=sft", "data=demo_chat",
                       f"data.demo_train_size={n}", "data.demo_eval_size=2"])
    task, data = get(cfg, "task"), get(cfg, "data")
    tok = load_tokenizer(get(cfg, "model"), task)
    return encode(load_raw(data, "sft"), tok, data, task, MAX_LEN).train.features, tok


def token_nll(logits, labels):
    """Per-position NLL of the next-token labels (0 where the label is -100), and the count mask."""
    import torch

    shifted = labels[..., 1:]
    nll = torch.nn.functional.cross_entropy(logits[..., :-1, :].transpose(1, 2), shifted, ignore_index=-100,
                                            reduction="none")
    return nll, shifted != -100


def test_first_fit_decreasing_matches_the_plain_algorithm_and_fits():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = first_fit_decreasing(lengths, 128, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # the plain O(n * bins) first-fit decreasing, same tie order, opens the same bins
    import torch

    rank = torch.randperm(500, generator=torch.Generator().manual_seed(3)).tolist()
    plain: list[list[int]] = []
    for i in sorted(range(500), key=lambda i: (-lengths[i], rank[i])):
        target = next((b for b in plain if sum(lengths[j] for j in b) + lengths[i] <= 128), None)
        if target is None:
            plain.append(target := [])
        target.append(i)
    assert bins == plain
    assert len(bins) <= sum(lengths) / 128 * 1.05 + 1  # nearly full rows
    assert first_fit_decreasing(lengths, 128, seed=3) == bins != first_fit_decreasing(lengths, 128, seed=4)
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([10, 200], 128, seed=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_conversation_losses_equal_unpacked(arch, attn, tiny_chat_llama_dir, tiny_chat_qwen2_dir):
    """fp32: every conversation's mean token loss inside packed rows equals its loss alone within
    1e-5, the batch loss the loop takes is the token mean over all of them, and redrawing one
    conversation's tokens leaves the logits of the others in its row unchanged."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = {"llama": tiny_chat_llama_dir, "qwen2": tiny_chat_qwen2_dir}[arch]
    features, tok = encoded_demo_chat(model_dir, 24)
    # use_cache=False as the trainer loads it: with a KV cache transformers skips the packed-sequence mask
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn,
                                                 use_cache=False).eval()
    assert model.config._attn_implementation == attn
    bins = first_fit_decreasing([len(f["input_ids"]) for f in features], MAX_LEN, seed=7)
    rows = pack_features(features, MAX_LEN, seed=7)
    assert len(rows) < len(features) / 2 and max(len(b) for b in bins) >= 3
    batch = packed_collator(tok.pad_token_id, flatten=False)(rows)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (len(rows), max(len(r["input_ids"]) for r in rows))

    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    nll, counted = token_nll(packed_logits, batch["labels"])
    alone_total, alone_count = 0.0, 0
    for r, members in enumerate(bins):
        start = 0
        for i in members:
            ids = torch.tensor([features[i]["input_ids"]])
            with torch.no_grad():
                alone_nll, alone_mask = token_nll(model(input_ids=ids).logits, torch.tensor([features[i]["labels"]]))
            end = start + ids.shape[1]
            # the packed row's positions start..end-1 predict this conversation's tokens 1..n-1 (shifted by one)
            packed_sum = float(nll[r, start:end - 1].sum())
            assert int(counted[r, start:end - 1].sum()) == int(alone_mask.sum()) > 0
            assert packed_sum / int(alone_mask.sum()) == pytest.approx(float(alone_nll.sum()) / int(alone_mask.sum()),
                                                                        abs=1e-5)
            assert not counted[r, end - 1] if end < len(rows[r]["input_ids"]) else True  # no label across the boundary
            alone_total, alone_count = alone_total + float(alone_nll.sum()), alone_count + int(alone_mask.sum())
            start = end

    # the loss the loop takes (model loss with num_items_in_batch) is the token mean over every conversation
    total = int((batch["labels"][:, 1:] != -100).sum())
    assert total == alone_count
    with torch.no_grad():
        loss = model(**batch, num_items_in_batch=torch.tensor(total)).loss
    assert float(loss) == pytest.approx(alone_total / alone_count, abs=1e-5)

    # no attention across conversations: redraw the first conversation of the fullest row
    r = max(range(len(bins)), key=lambda k: len(bins[k]))
    first_len = len(features[bins[r][0]]["input_ids"])
    changed = batch["input_ids"].clone()
    changed[r, :first_len] = torch.randint(5, len(tok), (first_len,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        after = model(input_ids=changed, position_ids=batch["position_ids"]).logits
    assert not torch.allclose(after[r, :first_len], packed_logits[r, :first_len])
    torch.testing.assert_close(after[r, first_len:], packed_logits[r, first_len:], rtol=0, atol=1e-6)


def test_packing_guard_refuses_attention_that_ignores_position_ids(tiny_chat_llama_dir):
    """A model whose attention kernel runs plain causal attention over the whole row (as a custom
    kernel might) lets packed conversations see each other: packing is refused before training."""
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def whole_row_causal(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("whole_row_causal", whole_row_causal)
    ALL_MASK_ATTENTION_FUNCTIONS.register("whole_row_causal", sdpa_mask)
    device = torch.device("cpu")
    honest = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir, dtype=torch.float32, attn_implementation="sdpa",
                                                  use_cache=False)
    check_block_attention(honest, device, flatten=False)
    # transformers builds the packed mask only without a KV cache: a model left with use_cache=True leaks
    honest.config.use_cache = True
    with pytest.raises(ConfigError, match="train.packing"):
        check_block_attention(honest, device, flatten=False)
    leaky = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir, dtype=torch.float32, use_cache=False,
                                                 attn_implementation="whole_row_causal")
    leaky.train()
    with pytest.raises(ConfigError, match="train.packing.*not kept apart"):
        check_block_attention(leaky, device, flatten=False)
    assert leaky.training  # the probe gives the model back in the mode it found it


def test_packing_and_attn_implementation_are_checked_before_any_trial(tiny_chat_llama_dir):
    with pytest.raises(ConfigError, match="train.packing: must be false for task=classification"):
        validate_config(compose_cfg(["train.packing=true"]))
    chat = ["model=custom", f"model.name_or_path={tiny_chat_llama_dir}", "task=sft", "data=demo_chat", "train.device=cpu"]
    with pytest.raises(ConfigError, match="model.attn_implementation: must be auto, sdpa or eager on device cpu"):
        validate_config(compose_cfg([*chat, "model.attn_implementation=flash_attention_2"]))
    with pytest.raises(ConfigError, match="model.attn_implementation: must be one of auto, sdpa, eager"):
        validate_config(compose_cfg([*chat, "model.attn_implementation=flex"]))
    with pytest.raises(ConfigError, match="train.packing: must be true or false"):
        validate_config(compose_cfg([*chat, "train.packing=2"]))
    assert validate_config(compose_cfg([*chat, "train.packing=true", "model.attn_implementation=eager"])).train.packing


def chat_trial(model_dir: Path, *overrides: str):
    reporter = RecordingReporter()
    cfg = compose_cfg(["model=custom", f"model.name_or_path={model_dir}", "task=sft", "data=demo_chat",
                       "data.demo_train_size=48", "data.demo_eval_size=4", "quant=none", f"train.max_seq_length={MAX_LEN}",
                       "task.max_new_tokens=2", "task.num_logged_samples=0", "train.save_adapter=false", *overrides])
    with GradientTap() as grads:
        result = run_trial(cfg, reporter)
    return result, grads, [m for _, m in reporter.logged]


def test_a_packed_step_over_all_data_takes_the_unpacked_step(tiny_chat_llama_dir):
    """One optimizer step over the whole training set, packed (rows as micro-batches, accumulated)
    or not (one batch of 48 conversations): the same loss tokens with the same weights, so the same
    logged loss and gradient; the packed step reads far fewer padded slots."""
    step = [*EXACT, "train.max_steps=1", "train.log_every_steps=1", "train.warmup_ratio=0"]
    plain, plain_grads, plain_logs = chat_trial(tiny_chat_llama_dir, *step, "train.batch_size=48")
    rows = plain.resolved["num_train"]
    packed, packed_grads, packed_logs = chat_trial(tiny_chat_llama_dir, *step, "train.packing=true",
                                                   "train.batch_size=2", "train.gradient_accumulation_steps=16")
    n_rows = packed.resolved["train_packed_rows"]
    assert plain.resolved["train_packed_rows"] is None and n_rows < rows / 2 and n_rows <= 32
    assert packed_logs[0]["train_loss"] == pytest.approx(plain_logs[0]["train_loss"], rel=1e-5)
    import torch

    for a, b in zip(packed_grads[0], plain_grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert packed.resolved["train_padding_fraction"] < plain.resolved["train_padding_fraction"] / 2


def test_packed_trial_runs_end_to_end_on_demo_chat(tiny_chat_llama_dir):
    """A packed QLoRA trial (4-bit, sdpa) trains, evaluates, generates and reports its rows; one
    epoch of packed rows sees every conversation once."""
    result, _, logs = chat_trial(tiny_chat_llama_dir, "quant=4bit", "train.packing=true", "train.batch_size=4",
                                 "train.num_epochs=1", "train.eval_every_steps=0", "train.log_every_steps=1",
                                 "model.attn_implementation=sdpa", "train.learning_rate=1e-3")
    resolved = result.resolved
    assert resolved["packing"] and resolved["train_packed_rows"] < resolved["num_train"]
    assert result.steps == -(-resolved["train_packed_rows"] // 4)
    assert result.samples_per_second * result.train_runtime_s == pytest.approx(resolved["num_train"], rel=1e-6)
    assert resolved["train_padding_fraction"] < 0.15
    assert result.summary_metrics()["train_packed_rows"] == resolved["train_packed_rows"]  # logged with the run
    assert {"eval_loss", "eval_exact_match"} <= set(result.metrics) and all(m["train_loss"] > 0 for m in logs if "train_loss" in m)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_packed_sweep_runs_end_to_end(tmp_path, tiny_chat_llama_dir):
    """`python sweep.py -m ... train.packing=true`: pre-flight, a 2-trial QLoRA sweep on demo_chat,
    every child run logging its packed rows and a low padding fraction."""
    from optuna.trial import TrialState
    from sweep_helpers import only_study, run_sweep, runs

    run_sweep(tmp_path, f"model.name_or_path={tiny_chat_llama_dir}", "task=sft", "data=demo_chat",
              "data.demo_train_size=64", "data.demo_eval_size=8", "search_space=llm", "quant=4bit", "train.max_steps=4",
              "train.eval_every_steps=2", "train.batch_size=2", f"train.max_seq_length={MAX_LEN}", "train.packing=true",
              "task.max_new_tokens=4", "task.num_logged_samples=2", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.pruner=none", "hydra.sweeper.reproduce.top_k=0")
    assert len(only_study(tmp_path).get_trials(states=(TrialState.COMPLETE,))) == 2
    _, _, children = runs(tmp_path)
    assert len(children) == 2
    for child in children:
        assert 0 < child.data.metrics["train_packed_rows"] < 64 and child.data.metrics["train_padding_fraction"] < 0.2
        assert child.data.params["train.packing"] == "True"
