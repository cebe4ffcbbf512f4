"""Generation metrics score the answer after a reasoning block, in the prediction and in the
reference; the sample table shows reasoning and answer apart. Must show: a tiny Qwen3 model with
the real Qwen3 chat template (its answers open with an empty `<think>\\n\\n</think>\\n\\n`),
trained to answer perfectly, scores eval_exact_match 1.0 — without the stripping it scored 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer.evaluation.scoring import sample_row
from trainer.evaluation.generation import answer_metrics, exact_match, split_reasoning, token_f1

REPO = Path(__file__).resolve().parents[1]
QWEN3_TEMPLATE = Path(__file__).with_name("chat_templates") / "qwen3.jinja"
# Qwen's special tokens; <think> and </think> are added but not special in Qwen3's tokenizer,
# so a decoded answer keeps them (as it does with the real tokenizer)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_THINK = ["<think>", "</think>"]
CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
            "Peru": "Lima", "Kenya": "Nairobi", "Chile": "Santiago"}


@pytest.mark.parametrize("reply, reasoning, answer", [
    ("<think>\n\n</think>\n\nParis", "", "Paris"),                       # Qwen3's empty block
    ("<think>\nthe capital is Paris\n</think>\n\nParis", "the capital is Paris", "Paris"),
    ("compare the two\n</think>\n\nParis", "compare the two", "Paris"),  # R1: the prompt opened <think>
    ("<think>\nstill thinking when the cap hit", "still thinking when the cap hit", ""),  # unterminated
    ("Paris", "", "Paris"),
    ("  The answer is <think> literally  ", "", "The answer is <think> literally"),  # not a block
])
def test_the_answer_is_what_follows_the_reasoning_block(reply, reasoning, answer):
    assert split_reasoning(reply) == (reasoning, answer)


def test_metrics_score_the_answers_of_prediction_and_reference():
    qwen = "<think>\n\n</think>\n\nthe Eiffel Tower"
    assert exact_match(qwen, "Eiffel Tower") == 1.0 and token_f1(qwen, "Eiffel Tower") == 1.0
    assert exact_match("Eiffel Tower", "<think>\nwhich one\n</think>\n\nthe Eiffel Tower") == 1.0
    # reasoning that names the answer but never closes is no answer
    assert exact_match("<think>\nEiffel Tower", "Eiffel Tower") == 0.0
    assert token_f1("<think>\nEiffel Tower", "Eiffel Tower") == 0.0
    assert exact_match("<think>\nEiffel Tower", "") == 1.0  # both empty answers agree, as SQuAD's F1 has it
    metrics = answer_metrics(["<think>\n\n</think>\n\n7", "<think>\nseven", "8"], ["7", "7", "7"])
    assert metrics == {"eval_exact_match": pytest.approx(1 / 3), "eval_token_f1": pytest.approx(1 / 3)}


def test_the_sample_table_shows_reasoning_and_answer_apart():
    row = sample_row("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "<think>\nr\n</think>\n\n42",
                     "<think>\nadd them\n</think>\n\n41")
    assert row == {"prompt": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "reference_reasoning": "r",
                   "reference": "42", "reasoning": "add them", "answer": "41"}


def qwen3_tokenizer(path: Path) -> None:
    """A byte-level BPE (as Qwen's) trained here on the test's words, with Qwen's special tokens
    and the real Qwen3 chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"What is the capital of {country}? {city}" for country, city in CAPITALS.items()] + [
        "user assistant system think"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=QWEN_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_THINK])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = QWEN3_TEMPLATE.read_text()
    fast.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """transformers' Qwen3ForCausalLM (hidden 32, 2 layers) with the tokenizer above."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("tiny_qwen3")
    qwen3_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    Qwen3ForCausalLM(config).save_pretrained(path)
    return path


def capitals_data(folder: Path) -> Path:
    """Single-turn questions; the eval split asks the same (a model that memorised them answers all)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                          {"role": "assistant", "content": city}]} for country, city in CAPITALS.items()]
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def sft_config(model: Path, data: Path, *overrides: str):
    """The trial config Hydra composes from conf/sweep.yaml (task=sft's LLM defaults included)."""
    import trainer  # noqa: F401  - registers the pkg_path resolver

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=["task=sft", "data=jsonl", f"data.path={data}", f"model.name_or_path={model}",
                                          "quant=none", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def test_the_real_qwen3_template_opens_each_answer_with_an_empty_think_block(tiny_qwen3):
    from transformers import AutoTokenizer

    from trainer.data.encoding import IGNORE_INDEX, encode
    from trainer.data.splits import load_raw

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    data = {"source": "jsonl", "path": str(capitals_data(tiny_qwen3 / "data")), "format": "messages",
            "train_split": "train", "eval_split": "validation"}
    encoded = encode(load_raw(data, "sft"), tok, data, {"type": "sft", "chat_template": None}, 64)
    trained = [t for t in encoded.train.features[0]["labels"] if t != IGNORE_INDEX]
    assert tok.decode(trained) == "<think>\n\n</think>\n\nParis<|im_end|>"  # what the model learns to say
    assert encoded.eval.references[0] == "Paris"


def test_a_tiny_qwen3_trained_to_answer_perfectly_scores_exact_match_1(tiny_qwen3, tmp_path, torch_single_thread):
    import trainer

    data = capitals_data(tmp_path / "capitals")
    cfg = sft_config(tiny_qwen3, data, "task.metric=exact_match", "lora.target_modules=all_linear", "lora.r=16",
                     "lora.lora_alpha=16", "lora.lora_dropout=0.0", "train.learning_rate=1e-2", "train.max_steps=150",
                     "train.batch_size=8", "train.warmup_ratio=0.0", "train.eval_every_steps=150",
                     "train.log_every_steps=50", "train.save_adapter=false", "task.num_logged_samples=8")
    result = trainer.run_trial(cfg)
    metrics = result.metrics
    table = {row["reference"]: row for row in result.samples}
    assert set(table) == set(CAPITALS.values())
    assert all(row["answer"] == row["reference"] and row["reasoning"] == "" for row in table.values()), table
    assert metrics["eval_exact_match"] == 1.0 and metrics["eval_token_f1"] == 1.0
    assert metrics["eval_answers_capped"] == 0.0
    assert result.objective == 1.0  # task.direction=auto followed exact_match: maximize, no error
