"""Checks that need the architecture and the data, but no weights: run on every search-space
extreme before a sweep. The meta-device model and the loaded data are cached per process."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig

from trainer.config import get
from trainer.data.splits import RawData, check_test_split, load_raw
from trainer.errors import ConfigError
from trainer.llm_defaults import LlmDefaults, auto_keys, resolve_llm_defaults
from trainer.settings import LoraSettings, QuantSettings, TrainSettings
from trainer.models.targets import TARGET_PRESETS, matches, is_head, leaf_names, resolve_target_modules
from trainer.validation import validate_config
from trainer.trace import traced

MB = 2**20
# CPU: peak RSS over what autograd keeps for backward (backward's transient gradients, and glibc
# keeping freed blocks mapped); measured 2.3-2.8 on MiniLM across batch, length, targets and
# quantization (bench/memory.py, "estimate against measured"). A GPU's peak allocated is the
# saved activations plus a smaller transient, so the factor there is 1 until bench/gpu.py says otherwise.
CPU_ACTIVATION_FACTOR = 2.6
# CPU: loading a checkpoint maps the file and materialises every tensor before quantizing:
# RSS peaks near twice the checkpoint's bytes while the model loads (1.9-2.1x measured).
CPU_LOAD_FACTOR = 2.0
QUANT_BITS = {"none": 32.0, "8bit": 8.0}  # 4bit: see _weight_bits


@lru_cache(maxsize=8)
def _raw_data(data_json: str, task_type: str) -> RawData:
    return load_raw(json.loads(data_json), task_type)


@lru_cache(maxsize=8)
def _cached_tokenizer(model_json: str, template_json: str) -> Any:
    from trainer.models.loading import load_tokenizer

    return load_tokenizer(json.loads(model_json), json.loads(template_json))


def _tokenizer(model_json: str, task_json: str) -> Any:
    """The task's tokenizer, loaded once per model and chat template (what it depends on)."""
    task = json.loads(task_json)
    return _cached_tokenizer(model_json, json.dumps({k: task.get(k) for k in ("type", "chat_template")}))


@lru_cache(maxsize=8)
def _sft_stats(model_json: str, data_json: str, task_json: str, max_len: int) -> dict[str, float]:
    """Render and tokenize every conversation once: a template that cannot locate the assistant
    turns, a tokenizer without a template, or data that never fits fails here, before any trial."""
    from trainer.data.encode_cache import cached_encode
    from trainer.models.loading import load_tokenizer

    data, task = json.loads(data_json), json.loads(task_json)
    tok = load_tokenizer(json.loads(model_json), task)  # stored on disk: the sweep's workers read it, not re-encode
    return cached_encode(_raw_data(data_json, "sft"), tok, data, task, max_len).stats


@lru_cache(maxsize=8)
def _meta_model(name: str, revision: str | None, trust_remote_code: bool, task_type: str, num_labels: int | None) -> Any:
    """Model skeleton with shapes but no storage (torch meta device): no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        if task_type == "classification":
            config.num_labels = num_labels
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


Shapes = dict[str, tuple[int, int, bool]]


def _linear_shapes(model: Any) -> Shapes:
    """name -> (in_features, out_features, has_bias) for every linear layer (GPT-2 Conv1D included)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, Conv1D):
            shapes[name] = (m.weight.shape[0], m.weight.shape[1], m.bias is not None)
        elif isinstance(m, torch.nn.Linear):
            shapes[name] = (m.in_features, m.out_features, m.bias is not None)
    return shapes


def lora_param_count(shapes: Shapes, targets: list[str], lora: LoraSettings, head_params: int,
                     body_bias_params: int) -> int:
    """What peft will train: r*(in+out) per targeted layer (+out for DoRA's magnitude), biases
    per lora.bias, and the copy of the classification head (`head_params`, 0 for causal LMs)."""
    body = [n for n in shapes if not is_head(n)]
    hit = set().union(*(matches(t, body) for t in targets))
    n = sum(lora.r * (shapes[h][0] + shapes[h][1]) + (shapes[h][1] if lora.use_dora else 0) for h in hit)
    if lora.bias == "all":
        n += body_bias_params
    elif lora.bias == "lora_only":
        n += sum(shapes[h][1] for h in hit if shapes[h][2])
    return n + head_params


@dataclass
class PreflightReport:
    """Architecture and data facts for one config, plus a memory estimate per trial."""

    model_type: str
    linear_module_names: list[str]
    target_modules_by_preset: dict[str, list[str]]
    trainable_params_by_preset: dict[str, int]
    base_params: int
    num_train: int
    num_eval: int
    num_labels: int | None
    target_modules: list[str] = field(default_factory=list)  # resolved for the configured lora.target_modules
    trainable_params: int = 0  # for the configured lora.target_modules
    quantizable_params: int = 0  # weights of body linear layers (what bitsandbytes quantizes)
    hidden_size: int = 0
    intermediate_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    vocab_size: int = 0
    head_params: int = 0  # trained in full for classification (0 for causal LMs)
    body_bias_params: int = 0
    linear_shapes: Shapes = field(default_factory=dict, repr=False)
    data_stats: dict[str, float] = field(default_factory=dict)  # SFT: rows truncated / dropped per split
    checkpoint_bytes_per_param: int = 4  # the dtype the weights are stored in (config dtype: 2 for bf16/fp16)
    llm_defaults: LlmDefaults = field(default_factory=LlmDefaults)  # the config's `auto` keys, resolved

    def estimate_memory_mb(self, cfg: DictConfig, device: str = "cuda") -> float:
        """Peak training memory of one trial in MiB on `device` (cuda: allocated tensors, without the
        CUDA context; cpu: the process's RSS growth over the imported runtime):

            weights     = Q * bits/8 + (N - Q) * w               Q = body linear weights, N = all params;
                          bits = 32 (none), 8 (8bit), 4 + 32/64 (4bit absmax per 64-block; with
                          double quant 4 + 8/64 + 32/(64*256)); w = 2 (pure_bf16) or 4 bytes
            lora        = P * (2w + s)                        P = trainable params: weight + grad, and
                                                              AdamW's two moments: s = 2w (torch, in the
                                                              param dtype), 8 (bitsandbytes 32-bit), 2 (8-bit)
            activations = B * T * L * (10*H + 2*I + A*T) * w  B = batch_size, T = max_seq_length,
                          L layers, H hidden, I intermediate, A heads (attention probabilities);
                          with gradient checkpointing only B*T*H*L*4 + one layer's share
                        + B * T * sum over LoRA-targeted layers of      what LoRA keeps: the input its A
                          (in * (w + 1 if dropout else w) + 2 * r * w)  matrix needs (dropout: its output
                                                                        and mask), and the r-wide product
            logits      = B * T * V * 4 * 2                   causal LM only (logits + log-softmax)
            cpu         = max(CPU_LOAD_FACTOR * checkpoint bytes,  weights + lora + logits
                              + CPU_ACTIVATION_FACTOR * activations)

        An upper bound on sequence length (dynamic padding usually makes T smaller).
        """
        if auto_keys(cfg):  # the config this report was made for, before its `auto` keys were resolved
            cfg = self.llm_defaults.apply(cfg)
        # unchecked (of): the sweep estimates configs preflight has checked already
        quant, train, lora = (group.of(get(cfg, name)) for group, name in
                              ((QuantSettings, "quant"), (TrainSettings, "train"), (LoraSettings, "lora")))
        w = 2 if train.precision == "pure_bf16" else 4
        state = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "paged_adamw_32bit": 8}.get(train.optim, 2 * w)
        weights = self.quantizable_params * _weight_bits(quant) / 8 + (self.base_params - self.quantizable_params) * w
        targets = resolve_target_modules(list(self.linear_shapes), lora.target_modules)
        adapter = lora_param_count(self.linear_shapes, targets, lora, self.head_params, self.body_bias_params) * (2 * w + state)
        b, t = train.batch_size, train.max_seq_length
        body = [n for n in self.linear_shapes if not is_head(n)]
        hit = set().union(*(matches(target, body) for target in targets))
        per_input = w + 1 if float(lora.lora_dropout) > 0 else w
        lora_acts = b * t * sum(self.linear_shapes[h][0] * per_input + 2 * lora.r * w for h in hit)
        per_layer = b * t * (10 * self.hidden_size + 2 * self.intermediate_size + self.num_heads * t) * w
        acts = per_layer * self.num_layers + lora_acts
        if train.gradient_checkpointing:
            acts = b * t * self.hidden_size * self.num_layers * w + per_layer + lora_acts / max(self.num_layers, 1)
        logits = b * t * self.vocab_size * 8 if get(cfg, "task.type") != "classification" else 0
        if device == "cpu":
            load = CPU_LOAD_FACTOR * self.base_params * self.checkpoint_bytes_per_param
            return max(load, weights + adapter + logits + CPU_ACTIVATION_FACTOR * acts) / MB
        return (weights + adapter + acts + logits) / MB


def _weight_bits(quant: QuantSettings) -> float:
    if quant.mode != "4bit":
        return QUANT_BITS[quant.mode]
    return 4 + (8 / 64 + 32 / (64 * 256) if quant.double_quant else 32 / 64)


def _config_int(config: Any, *names: str) -> int:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int):
            return value
    return 0


def _check_data(raw: RawData, cfg: DictConfig) -> None:
    task = get(cfg, "task")
    if task["type"] == "causal_lm" and task["metric"] == "accuracy" and raw.num_labels is None:
        raise ConfigError("task.metric", "accuracy", "loss or perplexity for data without labels",
                          "causal-LM accuracy scores verbalised labels")
    if task["type"] == "causal_lm" and raw.num_labels is not None and not get(cfg, "data.completion_column"):
        from trainer.data.encoding import verbalizations

        verbalizations(raw.num_labels, raw.label_names, task.get("verbalizer"))


def saved_module_params(model: Any, cfg: DictConfig, shapes: Shapes, targets: list[str],
                        lora: LoraSettings, quant: QuantSettings) -> int:
    """Parameters that lora.modules_to_save trains in full (peft's rule: module names ending with an
    entry); ConfigError for an entry that matches nothing, overlaps a LoRA target, or would copy a
    quantized layer (bitsandbytes weights cannot be trained)."""
    saved = lora.modules_to_save or []
    if not saved:
        return 0
    modules = dict(model.named_modules())
    quantized = quant.mode != "none"
    lora_layers = {n for t in targets for n in matches(t, shapes)}
    total = 0
    for entry in saved:
        hit = [n for n in modules if n and n.endswith(entry)]
        if not hit:
            raise ConfigError("lora.modules_to_save", saved, "module names of this model (e.g. lm_head, embed_tokens)",
                              f"{entry!r} matches no module")
        for name in hit:
            inner = {n for n in shapes if n == name or n.startswith(name + ".")}
            if inner & lora_layers:
                raise ConfigError("lora.modules_to_save", saved, "modules that are not LoRA targets",
                                  f"{name} is (or holds) a layer of lora.target_modules")
            if quantized and any(not is_head(n) for n in inner):
                raise ConfigError("lora.modules_to_save", saved,
                                  f"unquantized modules with quant.mode={quant.mode} "
                                  "(e.g. lm_head, embed_tokens, norms)",
                                  f"{name} is quantized by bitsandbytes and cannot be trained in full; use quant=none")
            if get(cfg, "task.type") != "classification" or not is_head(name):  # the head copy is counted already
                total += sum(p.numel() for p in modules[name].parameters())
    return total


@traced("trainer.preflight")
def preflight(cfg: DictConfig) -> PreflightReport:
    """validate_config, then the architecture/data checks (ConfigError on the first problem).
    The config's `auto` keys are resolved first (report.llm_defaults); the checks and the
    memory estimate are of the resolved config."""
    settings = validate_config(cfg)
    task_type, model = get(cfg, "task.type"), get(cfg, "model")
    model_json, task_json = json.dumps(model, sort_keys=True), json.dumps(get(cfg, "task"), sort_keys=True)
    check_test_split(get(cfg, "data"))
    raw = _raw_data(json.dumps(get(cfg, "data"), sort_keys=True), task_type)
    meta = _meta_model(model["name_or_path"], model.get("revision"), bool(model.get("trust_remote_code")),
                       task_type, raw.num_labels)
    config = meta.config
    defaults = LlmDefaults()
    if auto_keys(cfg):
        tok = _tokenizer(model_json, task_json) if task_type == "sft" else None
        defaults = resolve_llm_defaults(cfg, tokenizer=tok, raw=raw, model_config=config)
        cfg = defaults.apply(cfg)
        settings = validate_config(cfg)
    lora, quant, train = settings
    if quant.mode != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quant.mode", quant.mode, "none (bitsandbytes is not installed)")
    _check_data(raw, cfg)
    stats = {}
    if task_type == "sft":
        stats = _sft_stats(model_json, json.dumps(get(cfg, "data"), sort_keys=True),
                           json.dumps(get(cfg, "task"), sort_keys=True), train.max_seq_length)
    max_pos = _config_int(config, "max_position_embeddings", "n_positions")
    if max_pos and train.max_seq_length > max_pos:
        raise ConfigError("train.max_seq_length", train.max_seq_length, f"<= {max_pos} for this model")

    configured = resolve_target_modules(meta, lora.target_modules)
    shapes = _linear_shapes(meta)
    by_preset: dict[str, list[str]] = {}
    for preset in TARGET_PRESETS:
        try:
            by_preset[preset] = resolve_target_modules(meta, preset)
        except ConfigError:
            continue  # preset not applicable to this architecture
    params = dict(meta.named_parameters())
    base_params = sum(p.numel() for p in params.values())
    head = sum(p.numel() for n, p in params.items() if is_head(n)) if task_type == "classification" else 0
    head += saved_module_params(meta, cfg, shapes, configured, lora, quant)
    body_bias = sum(p.numel() for n, p in params.items() if n.endswith("bias") and not is_head(n))
    count = lambda targets: lora_param_count(shapes, targets, lora, head, body_bias)  # noqa: E731
    quantizable = sum(i * o for n, (i, o, _) in shapes.items() if not is_head(n))
    return PreflightReport(
        model_type=config.model_type,
        linear_module_names=leaf_names(shapes),
        target_modules_by_preset=by_preset,
        trainable_params_by_preset={p: count(t) for p, t in by_preset.items()},
        base_params=base_params,
        num_train=len(raw.train),
        num_eval=len(raw.eval),
        num_labels=raw.num_labels,
        target_modules=configured,
        trainable_params=count(configured),
        quantizable_params=quantizable,
        hidden_size=_config_int(config, "hidden_size", "n_embd"),
        intermediate_size=_config_int(config, "intermediate_size", "n_inner") or 4 * _config_int(config, "hidden_size", "n_embd"),
        num_layers=_config_int(config, "num_hidden_layers", "n_layer"),
        num_heads=_config_int(config, "num_attention_heads", "n_head"),
        vocab_size=_config_int(config, "vocab_size"),
        head_params=head,
        body_bias_params=body_bias,
        linear_shapes=shapes,
        data_stats=stats,
        checkpoint_bytes_per_param=2 if str(getattr(config, "dtype", None) or "")  # (torch_dtype: a deprecated alias)
        .replace("torch.", "") in ("bfloat16", "float16") else 4,
        llm_defaults=defaults,
    )
