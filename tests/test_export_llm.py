"""A chat result that runs anywhere: a `task.chat_template=chatml` QLoRA trial on a BASE model (a
byte-level BPE tokenizer with no chatml tokens and no chat template) gets `<|im_start|>` /
`<|im_end|>` as real tokens with trained rows; its export loads with plain transformers + peft (no
project code) and greedy generation stops at `<|im_end|>`; `lora-sweep chat --model <export>`
works after the training data is deleted; `chat --input` writes one line per input line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweep_helpers import REPO, env, only_study, run_sweep

pytestmark = pytest.mark.timeout(900)

ANSWER = "yes"
MAX_LEN = 48
SFT = ["task=sft", "task.chat_template=chatml", "data=jsonl", "data.format=messages", "quant=4bit",
       "search_space=none", "train.learning_rate=choice(0.05)", "train.max_steps=60", "train.eval_every_steps=60",
       "train.log_every_steps=10", "train.batch_size=8", f"train.max_seq_length={MAX_LEN}", "task.max_new_tokens=8",
       "lora.r=8", "lora.lora_alpha=16", "lora.target_modules=qv", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=none", "hydra.sweeper.reproduce.top_k=0"]

# Loads the export with nothing but torch, transformers and peft (4-bit base as in training) and
# prints what greedy generation did; imports no project module.
PLAIN = textwrap.dedent('''
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig

    folder, base_path, merged = sys.argv[1], sys.argv[2], sys.argv[3] == "merged"
    assert not any(m.split(".")[0] in ("trainer", "sweeps") for m in sys.modules)
    tok = AutoTokenizer.from_pretrained(folder)
    gen = GenerationConfig.from_pretrained(folder)
    if merged:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
        base = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quant, device_map={"": "cpu"},
                                                    dtype=torch.float32)
        for layer in base.modules():  # as trainer.models.loading.keep_4bit_layout_on_cpu: layers narrower than a
            layer.support_avx512bf16_for_cpu = False  # quantization block cannot take bnb's AVX512-BF16 repacking
        base.resize_token_embeddings(len(tok))
        model = PeftModel.from_pretrained(base, folder + "/adapter")
    ids = tok.apply_chat_template([{"role": "user", "content": "is 2 plus 2 four?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, generation_config=gen, max_new_tokens=12)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    print(json.dumps({"new": new, "im_end": tok.convert_tokens_to_ids("<|im_end|>"), "eos": gen.eos_token_id,
                      "greedy": not gen.do_sample, "text": tok.decode(new, skip_special_tokens=True)}))
''')


def _base_tokenizer(path: Path) -> None:
    """Byte-level BPE learnt from the demo chat set, with only <unk> <s> </s>: no chat tokens, no
    chat template (a base model's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.data.demo_chat import demo_chat_splits

    train, _ = demo_chat_splits(200, 2)
    corpus = [f"{m['role']} {m['content']}" for conv in train for m in conv] + ["system user assistant ANSWER"] + ["yes"] * 50
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_base_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_base_llama")
    _base_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert "<|im_end|>" not in tok.get_vocab() and not tok.chat_template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _load(model_dir: Path, template: str, seed: int):
    """Tokenizer and fp32 base as a trial loads them, after drawing the global RNG from `seed`."""
    import torch

    from trainer.models.loading import load_base_model, load_tokenizer

    tok = load_tokenizer({"name_or_path": str(model_dir)}, {"type": "sft", "chat_template": template})
    torch.manual_seed(seed)
    base = load_base_model({"name_or_path": str(model_dir)}, {"mode": "none"}, "sft", None, tok.pad_token_id,
                           torch.device("cpu"), False, tokenizer=tok)
    return tok, base


def test_named_template_adds_its_tokens_with_mean_rows_whatever_the_seed(tiny_base_llama_dir, torch_single_thread):
    """Warm and cold trials share one base: its new rows cannot depend on the seed that loaded it."""
    import torch

    from trainer.data.chat_templates import end_of_turn_id

    tok, one = _load(tiny_base_llama_dir, "chatml", seed=1)
    _, two = _load(tiny_base_llama_dir, "chatml", seed=2)
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert len(tok) == one.get_input_embeddings().weight.shape[0] == end + 1 == start + 2
    assert end_of_turn_id(tok) == end and len(tok("<|im_start|>user", add_special_tokens=False)["input_ids"]) == 2
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        w1, w2 = getattr(one, getter)().weight, getattr(two, getter)().weight
        assert torch.equal(w1, w2)
        assert torch.allclose(w1[start], w1[:start].mean(0)) and torch.equal(w1[start], w1[end])
    assert one.generation_config.eos_token_id == [end, tok.eos_token_id]


def test_new_rows_train_beside_lora_and_the_base_comes_back_pristine(tiny_base_llama_dir, torch_single_thread):
    import torch

    from trainer.errors import ConfigError
    from trainer.models.loading import apply_lora, is_pristine, restore_base

    tok, base = _load(tiny_base_llama_dir, "chatml", seed=0)
    before = base.get_input_embeddings().weight.clone()
    model = apply_lora(base, {"r": 4, "lora_alpha": 8}, ["q_proj", "v_proj"], "sft")
    new = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert {tuple(v) for v in model.peft_config["default"].trainable_token_indices.values()} == {tuple(new)}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    assert len(trainable) == 2  # embed_tokens and the untied lm_head, only their new rows
    base = restore_base(model)
    assert is_pristine(base) and torch.equal(base.get_input_embeddings().weight, before)
    with pytest.raises(ConfigError, match="lora.target_modules.*embed_tokens"):
        apply_lora(base, {"r": 4, "lora_alpha": 8}, ["q_proj", "embed_tokens"], "sft")


def test_templates_without_markers_add_nothing(tiny_base_llama_dir):
    from trainer.models.loading import load_tokenizer

    base_size = len(load_tokenizer({"name_or_path": str(tiny_base_llama_dir)}))
    for template in ("zephyr", "alpaca"):  # their turns end with the tokenizer's eos
        tok = load_tokenizer({"name_or_path": str(tiny_base_llama_dir)}, {"type": "sft", "chat_template": template})
        assert len(tok) == base_size
    llama3 = load_tokenizer({"name_or_path": str(tiny_base_llama_dir)}, {"type": "sft", "chat_template": "llama3"})
    assert len(llama3) == base_size + 3 and "<|eot_id|>" in llama3.get_vocab()
    from trainer.data.chat_templates import NAMED_TEMPLATES

    jinja = load_tokenizer({"name_or_path": str(tiny_base_llama_dir)},
                           {"type": "sft", "chat_template": NAMED_TEMPLATES["chatml"]})  # a Jinja string's markers too
    assert len(jinja) == base_size + 2 and "<|im_end|>" in jinja.get_vocab()


def _conversation(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": ANSWER}]}


def _cli(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env={**env(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def chatml_sweep(tmp_path_factory, tiny_base_llama_dir) -> Path:
    """One trial, trained until every answer is `yes<|im_end|>`; the data folder is then deleted."""
    from trainer.data.demo_chat import demo_chat_splits

    cwd = tmp_path_factory.mktemp("chatml_sweep")
    data = cwd / "data"
    data.mkdir()
    train, valid = demo_chat_splits(64, 8)
    for name, convs in (("train", train), ("validation", valid)):
        rows = [_conversation(conv[0]["content"]) for conv in convs]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_sweep(cwd, f"model.name_or_path={tiny_base_llama_dir}", f"data.path={data}", *SFT)
    shutil.rmtree(data)
    return cwd


@pytest.fixture(scope="module")
def exports(chatml_sweep) -> dict[str, Path]:
    outs = {}
    for kind, flags in (("adapter", []), ("merged", ["--merge", "--dtype", "float32", "--device", "cpu"])):
        outs[kind] = chatml_sweep / f"export-{kind}"
        proc = _cli(chatml_sweep, "sweeps.export", "--out", str(outs[kind]), *flags)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return outs


@pytest.mark.slow
def test_trial_trains_new_token_rows_in_the_adapter(chatml_sweep, tiny_base_llama_dir):
    from safetensors import safe_open

    trial = only_study(chatml_sweep).best_trial
    adapter = Path(only_study(chatml_sweep).user_attrs["trial_root"]) / f"trial_{trial.number:04d}" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        rows = {k: fh.get_tensor(k) for k in fh.keys() if "trainable_tokens_delta" in k}
    base_vocab = json.loads((tiny_base_llama_dir / "config.json").read_text())["vocab_size"]
    new_ids = [base_vocab, base_vocab + 1]  # <|im_start|>, <|im_end|> appended after the base vocabulary
    assert {tuple(v) for v in config["trainable_token_indices"].values()} == {tuple(new_ids)}
    assert sorted(k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in rows) == ["embed_tokens", "lm_head"]
    assert all(v.shape == (2, 32) for v in rows.values())  # only the new rows, not the whole matrices
    emb = next(v for k, v in rows.items() if "embed_tokens" in k)
    assert not bool((emb[0] == emb[1]).all())  # both started as the mean row; training moved them apart


@pytest.mark.slow
def test_export_folder_runs_with_plain_transformers_and_stops_at_im_end(exports, tiny_base_llama_dir):
    adapter_out = exports["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (adapter_out / "adapter").iterdir()}
    for folder in (adapter_out, adapter_out / "adapter", exports["merged"]):
        assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
    assert (adapter_out / "config.yaml").is_file() and "chatml" in (adapter_out / "config.yaml").read_text()
    for kind, folder in exports.items():
        proc = subprocess.run([sys.executable, "-c", PLAIN, str(folder), str(tiny_base_llama_dir), kind],
                              env={**env(), "PYTHONPATH": ""}, cwd=folder, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["greedy"] and got["im_end"] in got["eos"], got
        assert got["new"][-1] == got["im_end"] and len(got["new"]) < 12, got  # stopped at <|im_end|>, not the cap
        assert got["text"].strip() == ANSWER, got


@pytest.mark.slow
def test_chat_on_the_export_without_training_data(chatml_sweep, exports, tmp_path):
    assert not (chatml_sweep / "data").exists()
    proc = _cli(tmp_path, "sweeps.chat", "--model", str(exports["adapter"]), "--prompt", "is 3 plus 1 four?")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == ANSWER

    long = " ".join(["what is seven plus two"] * 20)  # far over train.max_seq_length
    lines = [json.dumps(_conversation("is 1 plus 1 two?")), json.dumps({"messages": [{"role": "user", "content": long}]}),
             json.dumps({"messages": [{"role": "user", "content": "what is 5 plus 5?"}]})]
    given, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_text("\n".join(lines) + "\n")
    proc = _cli(tmp_path, "sweeps.chat", "--model", str(exports["adapter"]), "--input", str(given), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [1, 2, 3] and rows[0]["answer"] == rows[2]["answer"] == ANSWER
    assert isinstance(rows[1]["answer"], str)  # answered, from the end of the question (its front cut)
    assert [bool(r.get("prompt_truncated")) for r in rows] == [False, True, False]
    assert rows[1]["prompt"].endswith("<|im_start|>assistant\n") and rows[0]["reference"] == ANSWER
    assert "from the left: 1; rows with errors: 0" in proc.stdout
    assert "eval_exact_match = 1.0" in proc.stdout


@pytest.mark.slow
def test_chat_input_keeps_bad_rows_as_error_records(exports, tmp_path):
    given, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_text("\n".join([json.dumps(_conversation("is 1 plus 1 two?")), "{not json",
                                json.dumps({"messages": [{"role": "pilot", "content": "hi"}]})]) + "\n")
    proc = _cli(tmp_path, "sweeps.chat", "--model", str(exports["merged"]), "--input", str(given), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["answer"] == ANSWER
    assert rows[1]["row"] == 2 and "JSON" in rows[1]["error"]
    assert rows[2]["row"] == 3 and "pilot" in rows[2]["error"]
    assert "rows with errors: 2" in proc.stdout


@pytest.mark.slow
def test_bad_device_flag_exits_2_before_loading(chatml_sweep, tmp_path):
    proc = _cli(chatml_sweep, "sweeps.export", "--out", str(tmp_path / "x"), "--merge", "--device", "tpu")
    assert proc.returncode == 2 and "--device" in proc.stderr
    import torch

    if not torch.cuda.is_available():
        proc = _cli(chatml_sweep, "sweeps.export", "--out", str(tmp_path / "x"), "--merge", "--device", "cuda")
        assert proc.returncode == 2 and "--device" in proc.stderr and "CUDA" in proc.stderr
    assert not (tmp_path / "x").exists()
