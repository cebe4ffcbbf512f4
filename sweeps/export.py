"""`python -m sweeps.export`: ship one trial of a sweep (its adapter, optionally a merged full model)
with a model card saying where it came from, checked against the model as it was trained.

The folder runs anywhere without this project: the adapter (adapter_config.json +
adapter_model.safetensors, tokens a named chat template added saved as peft's trainable-token
rows), the tokenizer with its chat template and added tokens, a greedy `generation_config.json`
whose eos includes the end-of-turn token (so transformers and vLLM stop at `<|im_end|>`), and the
trial's resolved, redacted `config.yaml` that `lora-sweep chat --model` reads. Nothing reads the
training data: the check below runs on seeded random token sequences.

The merge goes into a dequantized copy of the base loaded exactly as the trial loaded it (4/8-bit
included), never into the original full-precision checkpoint: the adapter was trained on top of the
quantized weights, so only those reproduce the trained model's outputs. It is done in `--dtype`
(bfloat16 by default: no fp32 copy of the model) on `--device` (cpu keeps it off the training GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.search.storage import is_masked, journal_path, latest_study_name, mask_url, open_storage, sqlite_path, storage_url
from sweeps.search.study import trial_folder
from sweeps.runtime.trial import adapter_sha256  # the hash the trial recorded

EXIT_BAD_INPUT = 2
N_SAMPLES = 16  # probe sequences of the logit check
PROBE_LENGTH = 32
DEVICES = ("auto", "cpu", "cuda")
# Allowed max |logit difference|, times max(1, max |reference logit|). fp32: the merge adds s*B@A to W
# once, so only float rounding differs (~1e-6); fp16/bf16 round every stored weight (11/8-bit mantissas)
# and the error grows through the layers (measured on tiny models: ~4e-4 / ~3e-3).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
INT8_EXTRA = 2e-2  # LLM.int8 also rounds activations to int8 at run time; the merged fp model does not
_SIZE = re.compile(r"^(\d+)\s*(B|KB|MB|GB|KIB|MIB|GIB)?$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class BadInput(Exception):
    """Rejected before anything is written; names the flag to fix."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")


@dataclass
class TrialSource:
    """A complete trial and where its adapter and config can be read from."""

    study: optuna.Study
    trial: FrozenTrial
    tracking_uri: str | None  # None: unusable here (masked password, database file missing)
    local_adapter: Path | None


@dataclass
class Selection(TrialSource):
    """The validated command line: what to export, from where, to where."""

    out: Path = Path(".")
    shard_bytes: int = 0
    device: str = "auto"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", help="study name (default: the latest one in --storage)")
    p.add_argument("--trial", type=int, help="trial number (default: the best; required for multi-objective)")
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty, else --force)")
    p.add_argument("--merge", action="store_true", help="also write the full model with the adapter merged in")
    p.add_argument("--max-shard-size", default="2GB", help="per weights file, e.g. 500MB, 2GB, 1GiB")
    p.add_argument("--dtype", default="bfloat16", choices=list(TOLERANCE),
                   help="dtype the merge is done and saved in (default bfloat16)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the merge runs: cpu (no copy of the model on the training GPU), cuda, or auto "
                        "(cuda when available)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: ./optuna-journal.log)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--register", metavar="NAME", help="register the merged model in the MLflow model registry")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p.parse_args(argv)


def _hint(study: optuna.Study) -> str:
    if len(study.directions) > 1:
        return f"complete trials on the Pareto front: {[t.number for t in study.best_trials]}"
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return f"the best trial is {study.best_trial.number}" if done else "the study has no complete trial"


def select(args: argparse.Namespace) -> Selection:
    """Every check of the command line against the stores; reads only (opening a missing store creates it)."""
    if args.register and not args.merge:
        raise BadInput("--register", "needs --merge (the registry gets the merged full model, not a bare adapter)")
    size = _SIZE.match(str(args.max_shard_size).strip())
    if not size:
        raise BadInput("--max-shard-size", f"{args.max_shard_size!r} is not a size; allowed: an integer with an "
                       "optional unit B, KB, MB, GB, KiB, MiB, GiB (e.g. 2GB)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device", "cuda was asked for but CUDA is not available here; allowed: cpu or auto")
    out, cwd = args.out.expanduser().resolve(), Path.cwd().resolve()
    if out.exists() and not out.is_dir():
        raise BadInput("--out", f"{out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise BadInput("--out", f"{out} exists and is not empty; use a new folder or pass --force to replace it")
        if out == cwd or out in cwd.parents:
            raise BadInput("--out", f"{out} holds the current directory; --force will not delete it")
    source = find_trial(args.storage, args.study, args.trial, args.tracking_uri, writes_mlflow=bool(args.register))
    return Selection(source.study, source.trial, source.tracking_uri, source.local_adapter, out,
                     int(size.group(1)) * _UNITS[(size.group(2) or "B").upper()], args.device)


def find_trial(storage: str | None, study_name: str | None, number: int | None, tracking_uri: str | None,
               writes_mlflow: bool = False) -> TrialSource:
    """The trial named on a command line (default: the study's best), checked against the stores;
    reads only (opening a missing store creates it)."""
    url = storage_url(storage)
    path = journal_path(url) or sqlite_path(url)
    if path is not None and not path.is_file():
        raise BadInput("--storage", f"no Optuna store at {path}; run from the sweep's folder or pass --storage")
    store = open_storage(url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False))
    try:
        name = study_name or latest_study_name(store)
    except LookupError as exc:
        raise BadInput("--study", str(exc)) from None
    if name not in names:
        raise BadInput("--study", f"no study {name!r} in {mask_url(url)}; existing: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=store)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number is None and len(study.directions) > 1:
        raise BadInput("--trial", f"study {name!r} has {len(study.directions)} objectives, so no single best trial; "
                       f"pick one ({_hint(study)})")
    if number is None and not any(t.state == TrialState.COMPLETE for t in trials.values()):
        raise BadInput("--trial", f"study {name!r} has no complete trial to export")
    if number is not None and number not in trials:
        raise BadInput("--trial", f"study {name!r} has no trial {number}; allowed: 0..{max(trials, default=-1)}")
    default = (study.user_attrs.get("race") or {}).get("winner", study.best_trial.number)  # the race winner first
    trial = trials[int(default) if number is None else number]
    if trial.state != TrialState.COMPLETE:
        raise BadInput("--trial", f"trial {trial.number} is {trial.state.name}; only COMPLETE trials have a trained "
                       f"adapter ({_hint(study)})")
    given = tracking_uri or study.user_attrs.get("mlflow_tracking_uri")
    database = sqlite_path(given) if given else None
    uri = given if given and not is_masked(given) and (database is None or database.is_file()) else None
    kind = "reproduce" if name.endswith("--reproduce") else "race" if name.endswith("--race") else "trial"
    root = study.user_attrs.get("trial_root")
    local = trial_folder(root, kind, trial.number) / "adapter" if root else None
    local = local if local is not None and local.is_dir() else None
    if uri is None and (local is None or writes_mlflow):
        why = "the trial's adapter is not on this machine" if local is None else "--register writes to it"
        raise BadInput("--tracking-uri", f"{why}, and the MLflow store {given!r} cannot be opened here; pass a "
                       "reachable tracking URI (with its password)")
    if local is None and not trial.user_attrs.get("mlflow_run_id"):
        raise BadInput("--trial", f"trial {trial.number} has neither a local adapter nor an MLflow run")
    return TrialSource(study, trial, uri, local)


def fetch(sel: TrialSource, scratch: Path) -> tuple[Path, Any, str]:
    """The sha-checked adapter folder and the resolved trial config (the run's config.yaml, else recomposed)."""
    import mlflow
    from omegaconf import OmegaConf

    run_id, config, source = sel.trial.user_attrs.get("mlflow_run_id"), None, "recomposed from the study"
    if sel.tracking_uri and run_id:
        try:
            config = OmegaConf.load(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=str(scratch), tracking_uri=sel.tracking_uri))
            source = f"config.yaml of MLflow run {run_id}"
        except Exception as exc:  # noqa: BLE001 - the study holds enough to recompose it
            print(f"warning: no config.yaml from MLflow ({exc}); recomposing the trial config", file=sys.stderr)
    if config is None:
        from sweeps.runtime.compose import ComposeSpec, compose_job

        attrs, spec = sel.study.user_attrs, sel.study.user_attrs["compose"]
        params = {**attrs.get("fixed_params", {}), **sel.trial.params, **sel.trial.user_attrs.get("overrides", {})}
        config = compose_job(ComposeSpec(spec["config_dir"], spec["config_name"], tuple(spec["overrides"])), params)
    adapter = sel.local_adapter or Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="adapter", dst_path=str(scratch), tracking_uri=sel.tracking_uri))
    expected, actual = sel.trial.user_attrs.get("adapter_sha256"), adapter_sha256(adapter)
    if expected and actual != expected:
        raise SystemExit(f"error: the adapter in {adapter} has sha256 {actual}, the trial recorded {expected}")
    return adapter, config, source


def trial_labels(cfg: Any, adapter: Path) -> tuple[list[str] | None, int | None]:
    """Label names and count from the trial's config (data.label_names, data.num_labels, a list
    task.verbalizer), else, for a classifier, the rows of the head the adapter saved: the data is
    never read."""
    from trainer.config import get
    from trainer.models.targets import CLASSIFIER_HEADS

    names, count = get(cfg, "data.label_names"), get(cfg, "data.num_labels")
    names = [str(n) for n in names] if names else None
    verbalizer = get(cfg, "task.verbalizer") if get(cfg, "task.type") == "causal_lm" else None
    count = count or (len(names) if names else None) or (len(verbalizer) if isinstance(verbalizer, list) else None)
    if count is None and get(cfg, "task.type") == "classification":
        from safetensors import safe_open

        with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
            heads = [fh.get_slice(k).get_shape() for k in fh.keys()
                     if any(f".{h}." in k for h in CLASSIFIER_HEADS) and k.endswith("weight")]
        count = min((shape[0] for shape in heads if len(shape) == 2), default=None)
    return names, count


def probe_batch(tok: Any, seed: int) -> dict[str, Any]:
    """N_SAMPLES sequences of PROBE_LENGTH token ids drawn from the whole vocabulary (added tokens
    included, the pad token not) with the trial's seed: the logit check's inputs, no data needed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(tok), (N_SAMPLES, PROBE_LENGTH), generator=gen)
    if tok.pad_token_id is not None:
        ids[ids == tok.pad_token_id] = (tok.pad_token_id + 1) % len(tok)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Models:
    """The trial's tokenizer and models, loaded the way `trainer.run_trial` loads them, from its
    config and adapter alone (the training data is not read)."""

    def __init__(self, cfg: Any, adapter: Path):
        from trainer.config import get
        from trainer.devices import resolve_device
        from trainer.errors import ConfigError
        from trainer.models.loading import load_tokenizer

        self.model_cfg, self.quant, self.task = get(cfg, "model"), get(cfg, "quant"), get(cfg, "task")
        self.type = self.task["type"]
        try:
            self.device = resolve_device(get(cfg, "train.device"))
        except ConfigError:  # trained on a GPU this machine lacks: check and chat on the CPU
            self.device = resolve_device("cpu")
        self.tok = load_tokenizer(self.model_cfg, self.task)
        self.label_names, self.num_labels = trial_labels(cfg, adapter)
        self.batch = probe_batch(self.tok, int(get(cfg, "seed")))

    def base(self, device: Any = None) -> Any:
        """Exactly as in the trial: quantized per quant.*, kbit-prepared, same head config, the
        tokenizer's vocabulary (tokens a named chat template added)."""
        from trainer.models.loading import load_base_model

        return load_base_model(self.model_cfg, self.quant, self.type, self.num_labels, self.tok.pad_token_id,
                               device if device is not None else self.device, gradient_checkpointing=False,
                               tokenizer=self.tok)

    def with_adapter(self, adapter: Path, base: Any = None) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(self.base() if base is None else base, str(adapter)).eval()

    def merged(self, adapter: Path, dtype: str, device: Any) -> Any:
        """The trial's base on `device`, dequantized straight into `dtype` layer by layer (no fp32
        copy unless dtype is float32), with the adapter merged in."""
        import torch

        from trainer.models.loading import cast_floating_params

        target = getattr(torch, dtype)
        base = self.base(device)
        if getattr(base, "is_quantized", False):
            base = base.dequantize(dtype=target)
        cast_floating_params(base, target)
        merged = self.with_adapter(adapter, base).merge_and_unload()
        if hasattr(merged.config, "use_cache"):
            merged.config.use_cache = True  # training switched the KV cache off; generation wants it
        return merged

    def reload(self, folder: Path, dtype: str, device: Any = None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if self.type == "classification" else AutoModelForCausalLM
        return cls.from_pretrained(str(folder), dtype=getattr(torch, dtype)).to(
            device if device is not None else self.device).eval()

    def logits(self, model: Any) -> Any:
        """fp32 logits of the probe batch, on the CPU."""
        import torch

        device = next(model.parameters()).device
        with torch.inference_mode():
            return model(**{k: v.to(device) for k, v in self.batch.items()}).logits.float().cpu()

    def generation_config(self, model: Any) -> Any:
        """Greedy, stopping at the end-of-turn token (task=sft), the tokenizer's eos and the base's
        eos; none of the base model's sampling or repetition settings."""
        from transformers import GenerationConfig

        from trainer.models.special_tokens import add_end_of_turn_eos

        gen = GenerationConfig(do_sample=False, num_beams=1, eos_token_id=model.generation_config.eos_token_id,
                               bos_token_id=self.tok.bos_token_id, pad_token_id=self.tok.pad_token_id)
        add_end_of_turn_eos(gen, self.tok)
        return gen


def trial_config_yaml(cfg: Any) -> str:
    """The trial's resolved config as `lora-sweep chat --model` reads it, secrets masked."""
    from omegaconf import OmegaConf

    from sweeps.tracking.redact import redact_yaml

    return redact_yaml(OmegaConf.to_yaml(cfg, resolve=True))


def export(sel: Selection, args: argparse.Namespace) -> int:
    """Stage beside --out, verify, then move into place (an interrupted export leaves no half folder)."""
    from trainer.devices import resolve_device
    from trainer.models.special_tokens import trains_new_tokens

    stage = sel.out.parent / f".{sel.out.name}.export-tmp"
    shutil.rmtree(stage, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="lora-export-") as scratch:
        adapter, cfg, config_source = fetch(sel, Path(scratch))
        try:
            (stage / "adapter").mkdir(parents=True)
            for f in [*adapter.glob("*.safetensors"), adapter / "adapter_config.json"]:
                shutil.copy2(f, stage / "adapter" / f.name)
            models = Models(cfg, adapter)
            trained = models.with_adapter(stage / "adapter")
            reference = models.logits(trained)
            new_tokens = trains_new_tokens(trained)
            # the adapter folder is complete on its own too: vLLM reads a LoRA's tokenizer from it
            for folder in (stage, stage / "adapter"):
                models.tok.save_pretrained(str(folder))
            gen = models.generation_config(trained) if models.type != "classification" else None
            if gen is not None:
                for folder in (stage, stage / "adapter"):
                    gen.save_pretrained(str(folder))
            (stage / "config.yaml").write_text(trial_config_yaml(cfg), encoding="utf-8")
            del trained
            if args.merge:
                device = resolve_device(sel.device)
                merged = models.merged(stage / "adapter", args.dtype, device)
                if gen is not None:
                    merged.generation_config = gen
                merged.save_pretrained(str(stage), max_shard_size=sel.shard_bytes, safe_serialization=True)
                del merged
                exported = models.logits(models.reload(stage, args.dtype, device))
            else:
                exported = models.logits(models.with_adapter(stage / "adapter"))
            diff = float((exported - reference).abs().max())
            rel = TOLERANCE[args.dtype if args.merge else "float32"]
            rel += INT8_EXTRA if models.quant["mode"] == "8bit" else 0
            tol = rel * max(1.0, float(reference.abs().max()))
            check = {"diff": diff, "tol": tol, "rel": rel, "n": len(models.batch["input_ids"]), "source": config_source,
                     "new_tokens": new_tokens, "eos": gen.eos_token_id if gen is not None else None}
            (stage / "README.md").write_text(model_card(sel, args, cfg, check), encoding="utf-8")
            if sel.out.exists():
                shutil.rmtree(sel.out)
            stage.rename(sel.out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    print(f"exported trial {sel.trial.number} of {sel.study.study_name} to {sel.out}")
    print(f"max abs logit difference: {diff:.3g} (tolerance {tol:.3g})")
    if new_tokens and not args.merge:
        print("note: the adapter carries new token rows (peft trainable tokens), which vLLM's LoRA loader does not "
              "read yet; serve an export made with --merge in vLLM")
    if not diff <= tol:
        print(f"error: the export does not reproduce the trained model ({diff:.3g} > {tol:.3g})", file=sys.stderr)
        return 1
    if args.register:
        register(sel, args.register, models, args.dtype)
    return 0


def _json(obj: Any) -> str:
    return "```json\n" + json.dumps(obj, indent=2, default=str) + "\n```"


def model_card(sel: Selection, args: argparse.Namespace, cfg: Any, check: dict[str, Any]) -> str:
    """README.md: where the weights come from, how they were made, and the proof they reproduce the trial."""
    from trainer.config import get
    from trainer.fingerprint import environment_fingerprint

    t, attrs, quant, model = sel.trial, sel.study.user_attrs, get(cfg, "quant"), get(cfg, "model")
    then, now, ua = t.user_attrs.get("environment", {}), environment_fingerprint(), t.user_attrs
    rows = {"study": sel.study.study_name, "trial": t.number,
            "objective": ", ".join(f"{k} = {v:.6g}" for k, v in zip(attrs.get("objectives", ["value"]), t.values)),
            "MLflow run id": ua.get("mlflow_run_id"), "MLflow parent run": attrs.get("mlflow_parent_run_id"),
            "MLflow store": mask_url(sel.tracking_uri or str(attrs.get("mlflow_tracking_uri"))),
            "base model": f"{model['name_or_path']} (revision {model.get('revision')})", "task": get(cfg, "task.type"),
            "quantization in training": json.dumps(quant),
            "seed / data_seed": f"{ua.get('seed')} / {ua.get('data_seed')}",
            "trainable params": ua.get("trainable_params"), "adapter sha256": ua.get("adapter_sha256"),
            "trial config": check["source"]}
    table = "\n".join(f"| {k} | `{v}` |" for k, v in rows.items())
    versions = "\n".join(f"| {k} | {then.get(k, '')} | {now.get(k, '')} |" for k in sorted(set(then) | set(now)))
    cls = "AutoModelForSequenceClassification" if get(cfg, "task.type") == "classification" else "AutoModelForCausalLM"
    resize = "base.resize_token_embeddings(len(tok))  # the tokens the chat template added\n" if check["new_tokens"] else ""
    load = (f"from transformers import {cls}, AutoTokenizer\nmodel = {cls}.from_pretrained('{sel.out}')\n"
            f"tok = AutoTokenizer.from_pretrained('{sel.out}')" if args.merge else
            f"from peft import PeftModel\nfrom transformers import {cls}, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained('{sel.out}')\n"
            f"base = {cls}.from_pretrained('{model['name_or_path']}')  # quantized as in training (table above)\n"
            f"{resize}model = PeftModel.from_pretrained(base, '{sel.out}/adapter')")
    what = (f"the base model with the trial's LoRA adapter merged in ({args.dtype} safetensors) and the adapter "
            "itself in `adapter/`" if args.merge else "the trial's LoRA adapter, in `adapter/`")
    what += (", the tokenizer (chat template and added tokens), `config.yaml` (the trial's config, which "
             "`lora-sweep chat --model` reads)")
    if check["eos"] is not None:
        what += f" and a greedy `generation_config.json` that stops at token ids {check['eos']}"
    if check["new_tokens"]:
        what += (". The tokens the chat template added are trained rows of the adapter (peft trainable tokens); "
                 "vLLM's LoRA loader does not read those yet, so serve the merged export in vLLM")
    why = "" if not args.merge or quant["mode"] == "none" else f"""
## Why the merge uses dequantized weights
The adapter was trained on top of the {quant['mode']} quantized base. Those quantized weights were dequantized (the
values the trained model computed with) and the LoRA update was added to them, so this model reproduces the trained
one. Merging into the original full-precision checkpoint would add the update to different weights (off by the
quantization error) and change the outputs.
"""
    return f"""# {sel.study.study_name}, trial {t.number}

This folder holds {what}.

| | |
|---|---|
{table}

## Params
{_json(t.params)}

## Metrics
{_json(ua.get("metrics", {}))}

## LoRA
{_json(get(cfg, "lora"))}

## Verification
Max abs logit difference between this export, reloaded from disk, and the trained model (base loaded as in the trial
+ adapter) on {check['n']} seeded random token sequences (no data needed): **{check['diff']:.3g}**, tolerance {check['tol']:.3g} ({check['rel']:g} ×
max(1, max |logit|)). A float32 merge differs by float rounding only; float16/bfloat16 round every stored weight, and
8-bit training also rounded activations at run time, hence their looser bounds.
{why}
## Package versions
| package | training | export |
|---|---|---|
{versions}

## Load
```python
{load}
```
"""


def register(sel: Selection, name: str, models: Models, dtype: str) -> None:
    """Log the merged model on a new run under the sweep's parent run and register it as `name`."""
    import importlib.metadata as md

    import mlflow
    from huggingface_hub import ModelCard
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(sel.tracking_uri), sel.trial.user_attrs["mlflow_run_id"]
    tags = {"optuna.study_name": sel.study.study_name, "optuna.trial_number": str(sel.trial.number),
            "export.source_run_id": run_id, "sweep.kind": "export"}
    parent = sel.study.user_attrs.get("mlflow_parent_run_id")
    pins = [f"{d}=={md.version(d)}" for d in ("torch", "transformers", "safetensors", "tokenizers")]
    mlflow.set_tracking_uri(sel.tracking_uri)
    with mlflow.start_run(experiment_id=client.get_run(run_id).info.experiment_id, tags=tags | (
            {"mlflow.parentRunId": parent} if parent else {}), run_name=f"export-trial-{sel.trial.number}") as run:
        info = mlflow.transformers.log_model(
            {"model": models.reload(sel.out, dtype), "tokenizer": models.tok}, name="model", registered_model_name=name,
            task="text-classification" if models.type == "classification" else "text-generation",
            model_card=ModelCard((sel.out / "README.md").read_text(encoding="utf-8")), pip_requirements=pins)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(info.registered_model_version), key, value)
    print(f"registered {name} version {info.registered_model_version} (run {run.info.run_id})")


def quiet_libraries() -> None:
    """A command-line tool's output is its own: no library progress bars or chatter."""
    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(var, value)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sel = select(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    return export(sel, args)


if __name__ == "__main__":
    sys.exit(main())
