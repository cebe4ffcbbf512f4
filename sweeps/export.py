"""`python -m sweeps.export`: ship one trial of a sweep — its adapter, optionally a merged full model —
with a model card that says where it came from, checked against the model as it was trained.

The merge goes into a dequantized copy of the base loaded exactly as the trial loaded it (4/8-bit
included), never into the original full-precision checkpoint: the adapter was trained on top of the
quantized weights, so only that base reproduces the trained model's outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.storage import journal_path, latest_study_name, mask_url, open_storage, storage_url

EXIT_BAD_INPUT = 2
N_SAMPLES = 16
# max |logit difference| allowed, relative to max(1, max |reference logit|). fp32: merging adds
# s*B@A to W once, so only float rounding differs (~1e-6); bf16/fp16: the stored weights themselves
# are rounded (8/11-bit mantissas) and the error grows through the layers.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}
INT8_EXTRA = 2e-2  # LLM.int8 also quantizes activations at run time; the dequantized merge does not
_SIZE = re.compile(r"^(\d+)\s*(B|KB|MB|GB|KIB|MIB|GIB)?$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class BadInput(Exception):
    """Rejected before anything is written; `flag` names the option to fix."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")


@dataclass
class Selection:
    """Everything validated up front: what to export, from where, to where."""

    study: optuna.Study
    trial: FrozenTrial
    out: Path
    tracking_uri: str | None  # None: not usable (masked password, missing file)
    local_adapter: Path | None
    shard_bytes: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", help="study name (default: the latest in --storage)")
    p.add_argument("--trial", type=int, help="trial number (default: the best; required for multi-objective)")
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty, else --force)")
    p.add_argument("--merge", action="store_true", help="also write a full model with the adapter merged in")
    p.add_argument("--max-shard-size", default="2GB", help="e.g. 500MB, 2GB, 1GiB (merged weights per file)")
    p.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE), help="dtype of the merged weights")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: ./optuna-journal.log)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--register", metavar="NAME", help="register the merged model in the MLflow model registry")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p.parse_args(argv)


def _state_hint(study: optuna.Study) -> str:
    if len(study.directions) > 1:
        return f"complete trials on the Pareto front: {[t.number for t in study.best_trials]}"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return f"the best trial is {study.best_trial.number}" if complete else "the study has no complete trial"


def select(args: argparse.Namespace) -> Selection:
    """All checks of the command line against the stores, before any file is written."""
    if args.register and not args.merge:
        raise BadInput("--register", "needs --merge (the registry gets the merged full model, not a bare adapter)")
    size = _SIZE.match(str(args.max_shard_size).strip())
    if not size:
        raise BadInput("--max-shard-size", f"{args.max_shard_size!r} is not a size; allowed: an integer with an "
                       "optional unit B, KB, MB, GB, KiB, MiB, GiB (e.g. 2GB)")
    out = args.out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise BadInput("--out", f"{out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise BadInput("--out", f"{out} exists and is not empty; choose a new folder or pass --force to replace it")
        if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
            raise BadInput("--out", f"{out} holds the current directory; --force will not delete it")
    url = storage_url(args.storage)
    path = journal_path(url)
    db = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    if (path or db) is not None and not (path or db).is_file():
        raise BadInput("--storage", f"no Optuna store at {path or db}; run from the sweep's directory or pass --storage")
    storage = open_storage(url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    try:
        name = args.study or latest_study_name(storage)
    except LookupError as exc:
        raise BadInput("--study", str(exc)) from None
    if name not in names:
        raise BadInput("--study", f"no study {name!r} in {mask_url(url)}; existing: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if args.trial is None:
        if len(study.directions) > 1:
            raise BadInput("--trial", f"study {name!r} has {len(study.directions)} objectives, so there is no single "
                           f"best trial; pass one ({_state_hint(study)})")
        if not any(t.state == TrialState.COMPLETE for t in trials.values()):
            raise BadInput("--trial", f"study {name!r} has no complete trial to export")
        number = study.best_trial.number
    elif args.trial not in trials:
        raise BadInput("--trial", f"study {name!r} has no trial {args.trial}; allowed: 0..{max(trials, default=-1)}")
    else:
        number = args.trial
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise BadInput("--trial", f"trial {number} is {trial.state.name}; only COMPLETE trials have a trained "
                       f"adapter ({_state_hint(study)})")
    uri = args.tracking_uri or study.user_attrs.get("mlflow_tracking_uri")
    if uri and ("***" in uri or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file())):
        uri = None  # masked password or a database that is not here: opening it would create one
    kind = "reproduce" if name.endswith("--reproduce") else "trial"
    local = Path(study.user_attrs.get("trial_root", "")) / f"{kind}_{number:04d}" / "adapter"
    local = local if study.user_attrs.get("trial_root") and local.is_dir() else None
    if (local is None or args.register) and uri is None:
        need = "the adapter is not on this machine" if local is None else "--register writes to it"
        raise BadInput("--tracking-uri", f"{need}, and the MLflow store "
                       f"{args.tracking_uri or study.user_attrs.get('mlflow_tracking_uri')!r} cannot be opened; "
                       "pass a reachable tracking URI (with its password)")
    if trial.user_attrs.get("mlflow_run_id") is None and local is None:
        raise BadInput("--trial", f"trial {number} has neither a local adapter nor an MLflow run")
    return Selection(study, trial, out, uri, local,
                     int(size.group(1)) * _UNITS[(size.group(2) or "B").upper()])


def adapter_sha256(folder: Path) -> str:
    """Same digest as the worker's `adapter_sha256` attr: all *.safetensors bytes, sorted by name."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fetch(sel: Selection, scratch: Path) -> tuple[Path, Any, str]:
    """The verified adapter folder and the trial's resolved config (MLflow's config.yaml, else recomposed)."""
    from omegaconf import OmegaConf

    run_id, config, source = sel.trial.user_attrs.get("mlflow_run_id"), None, "recomposed from the study"
    if sel.tracking_uri and run_id:
        import mlflow

        try:
            config = OmegaConf.load(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=str(scratch), tracking_uri=sel.tracking_uri))
            source = f"config.yaml of MLflow run {run_id}"
        except Exception as exc:  # noqa: BLE001 - the study holds enough to recompose it
            print(f"warning: no config.yaml from MLflow ({exc}); recomposing the trial config", file=sys.stderr)
    if config is None:
        from sweeps.compose import ComposeSpec, compose_job

        attrs, spec = sel.study.user_attrs, sel.study.user_attrs["compose"]
        params = {**attrs.get("fixed_params", {}), **sel.trial.params, **sel.trial.user_attrs.get("overrides", {})}
        config = compose_job(ComposeSpec(spec["config_dir"], spec["config_name"], tuple(spec["overrides"])), params)
    adapter = sel.local_adapter
    if adapter is None:
        import mlflow

        adapter = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter",
                                                           dst_path=str(scratch), tracking_uri=sel.tracking_uri))
    expected, actual = sel.trial.user_attrs.get("adapter_sha256"), adapter_sha256(adapter)
    if expected and actual != expected:
        raise SystemExit(f"error: adapter at {adapter} has sha256 {actual}, the trial recorded {expected}")
    return adapter, config, source


class Models:
    """The trial's model pieces, loaded the way `trainer.run_trial` loads them."""

    def __init__(self, cfg: Any):
        from trainer.config import get
        from trainer.devices import resolve_device
        from trainer.model import load_tokenizer

        self.model_cfg, self.quant, self.task = get(cfg, "model"), get(cfg, "quant"), get(cfg, "task")
        self.type, self.device = self.task["type"], resolve_device(get(cfg, "train.device"))
        self.tok = load_tokenizer(self.model_cfg)
        self.batch, self.num_labels = self.sample(get(cfg, "data"), get(cfg, "train.max_seq_length"))

    def sample(self, data_cfg: dict, max_len: int) -> tuple[dict[str, Any], int | None]:
        """First N eval examples, tokenized and padded as in training (labels dropped)."""
        from trainer.data import load_raw
        from trainer.encoding import encode, make_collator

        data = encode(load_raw(data_cfg, self.type), self.tok, data_cfg, self.task, max_len)
        rows = [{k: v for k, v in f.items() if k != "labels"} for f in data.eval.features[:N_SAMPLES]]
        batch = make_collator(self.tok, self.type)(rows)
        return {k: v for k, v in batch.items() if v is not None}, data.num_labels

    def base(self) -> Any:
        from trainer.model import load_base_model

        return load_base_model(self.model_cfg, self.quant, self.type, self.num_labels, self.tok.pad_token_id,
                               self.device, gradient_checkpointing=False)

    def with_adapter(self, adapter: Path) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(self.base(), str(adapter)).eval()

    def logits(self, model: Any) -> Any:
        """fp32 logits; causal LMs: only at real (non-padding) positions."""
        import torch

        with torch.inference_mode():
            out = model(**{k: v.to(self.device) for k, v in self.batch.items()}).logits.float().cpu()
        return out if self.type == "classification" else out[self.batch["attention_mask"].bool()]

    def merged(self, adapter: Path, dtype: str) -> Any:
        """Dequantize the trial's base, merge in fp32, then cast: one rounding step to `dtype`."""
        import torch
        from peft import PeftModel
        from transformers import AutoConfig

        base = self.base()
        if getattr(base, "is_quantized", False):
            base = base.dequantize()
        merged = PeftModel.from_pretrained(base.float(), str(adapter)).merge_and_unload()
        merged = merged.to(getattr(torch, dtype)).eval()
        original = AutoConfig.from_pretrained(self.model_cfg["name_or_path"], revision=self.model_cfg.get("revision"),
                                              trust_remote_code=bool(self.model_cfg.get("trust_remote_code")))
        if hasattr(merged.config, "use_cache"):  # training switched the KV cache off; generation wants it back
            merged.config.use_cache = getattr(original, "use_cache", True)
        return merged

    def reload(self, folder: Path, dtype: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if self.type == "classification" else AutoModelForCausalLM
        return cls.from_pretrained(str(folder), dtype=getattr(torch, dtype)).to(self.device).eval()


def export(sel: Selection, args: argparse.Namespace) -> int:
    from trainer.fingerprint import environment_fingerprint

    stage = sel.out.parent / f".{sel.out.name}.export-tmp"
    shutil.rmtree(stage, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="lora-export-") as scratch:
        adapter, cfg, config_source = fetch(sel, Path(scratch))
        try:
            (stage / "adapter").mkdir(parents=True)
            for f in [*adapter.glob("*.safetensors"), adapter / "adapter_config.json"]:
                shutil.copy2(f, stage / "adapter" / f.name)
            models = Models(cfg)
            reference = models.logits(models.with_adapter(stage / "adapter"))
            if args.merge:
                merged = models.merged(stage / "adapter", args.dtype)
                merged.save_pretrained(str(stage), max_shard_size=sel.shard_bytes, safe_serialization=True)
                models.tok.save_pretrained(str(stage))
                del merged
                exported = models.logits(models.reload(stage, args.dtype))
            else:
                exported = models.logits(models.with_adapter(stage / "adapter"))
            diff = float((exported - reference).abs().max())
            tol = (TOLERANCE[args.dtype if args.merge else "float32"] + (INT8_EXTRA if models.quant["mode"] == "8bit" else 0)
                   ) * max(1.0, float(reference.abs().max()))
            facts = {"config_source": config_source, "diff": diff, "tol": tol, "n": int(models.batch["input_ids"].shape[0]),
                     "now": environment_fingerprint(), "cfg": cfg}
            (stage / "README.md").write_text(model_card(sel, args, facts), encoding="utf-8")
            if sel.out.exists():
                shutil.rmtree(sel.out)
            stage.rename(sel.out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    print(f"exported trial {sel.trial.number} of {sel.study.study_name} to {sel.out}")
    print(f"max abs logit difference: {diff:.3g} (tolerance {tol:.3g})")
    if not diff <= tol:
        print(f"error: the export does not reproduce the trained model (difference {diff:.3g} > {tol:.3g})", file=sys.stderr)
        return 1
    if args.register:
        register(sel, args.register, models, args.dtype)
    return 0


def model_card(sel: Selection, args: argparse.Namespace, facts: dict[str, Any]) -> str:
    """README.md: provenance of the weights and the check that they reproduce the trained model."""
    from trainer.config import get

    t, attrs, cfg = sel.trial, sel.study.user_attrs, facts["cfg"]
    quant, lora, model = get(cfg, "quant"), get(cfg, "lora"), get(cfg, "model")
    env_then, env_now = t.user_attrs.get("environment", {}), facts["now"]
    what = (f"the base model with the LoRA adapter merged in, {args.dtype} safetensors, plus the adapter in `adapter/`"
            if args.merge else "the LoRA adapter (`adapter/`) for the base model below")
    rows = [("study", sel.study.study_name), ("trial", t.number), ("objective", f"{attrs.get('objective_metric')} = {t.values}"),
            ("MLflow run id", t.user_attrs.get("mlflow_run_id")), ("MLflow parent run", attrs.get("mlflow_parent_run_id")),
            ("MLflow store", mask_url(sel.tracking_uri or str(attrs.get("mlflow_tracking_uri")))),
            ("base model", f"{model['name_or_path']} (revision {model.get('revision')})"), ("task", get(cfg, "task.type")),
            ("quantization in training", json.dumps(quant)), ("seed / data_seed", f"{t.user_attrs.get('seed')} / {t.user_attrs.get('data_seed')}"),
            ("trainable params", t.user_attrs.get("trainable_params")), ("adapter sha256", t.user_attrs.get("adapter_sha256")),
            ("trial config", facts["config_source"])]
    lines = [f"# {sel.study.study_name} — trial {t.number}", "", f"This folder holds {what}.", "",
             "| | |", "|---|---|", *[f"| {k} | `{v}` |" for k, v in rows], "",
             "## Params", "", "```json", json.dumps(t.params, indent=2, default=str), "```", "",
             "## Metrics", "", "```json", json.dumps(t.user_attrs.get("metrics", {}), indent=2, default=str), "```", "",
             "## LoRA", "", "```json", json.dumps(lora, indent=2, default=str), "```", "",
             "## Verification", "",
             f"Max abs logit difference between this export (reloaded from disk) and the trained model (base loaded "
             f"as in the trial + adapter) on {facts['n']} eval examples: **{facts['diff']:.3g}** (tolerance "
             f"{facts['tol']:.3g} = {TOLERANCE[args.dtype if args.merge else 'float32']:g}"
             f"{f' + {INT8_EXTRA:g} (int8 activations)' if quant['mode'] == '8bit' else ''} × max(1, max |logit|)). "
             "fp32 merges differ by float rounding only; bf16/fp16 round every stored weight, hence the looser bound.", ""]
    if args.merge and quant["mode"] != "none":
        lines += ["## Why the merge uses dequantized weights", "",
                  f"The adapter was trained on top of the {quant['mode']} ({quant.get('quant_type', 'int8')}) quantized "
                  "base. Its weights were dequantized (the exact values the trained model computed with) and the LoRA "
                  "update added to them, so this model reproduces the trained one. Merging into the original "
                  "full-precision checkpoint would add the update to different weights (off by the quantization "
                  "error) and change the outputs.", ""]
    lines += ["## Package versions", "", "| package | training | export |", "|---|---|---|",
              *[f"| {k} | {env_then.get(k, '')} | {env_now.get(k, '')} |" for k in sorted(set(env_then) | set(env_now))], ""]
    load = ("AutoModelForSequenceClassification" if get(cfg, "task.type") == "classification" else "AutoModelForCausalLM")
    lines += ["## Load", "", "```python", f"from transformers import {load}",
              f"model = {load}.from_pretrained('{sel.out}')" if args.merge else
              f"# base = load the base as in training, then: PeftModel.from_pretrained(base, '{sel.out}/adapter')", "```", ""]
    return "\n".join(lines)


def register(sel: Selection, name: str, models: Models, dtype: str) -> None:
    """Log the merged model on a new run under the sweep's parent and register it as `name`."""
    import importlib.metadata as md

    import mlflow
    from huggingface_hub import ModelCard
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sel.tracking_uri)
    run_id = sel.trial.user_attrs["mlflow_run_id"]
    experiment = client.get_run(run_id).info.experiment_id
    tags = {"optuna.study_name": sel.study.study_name, "optuna.trial_number": str(sel.trial.number),
            "export.source_run_id": run_id, "sweep.kind": "export"}
    if sel.study.user_attrs.get("mlflow_parent_run_id"):
        tags["mlflow.parentRunId"] = sel.study.user_attrs["mlflow_parent_run_id"]
    model = models.reload(sel.out, dtype)
    pins = [f"{d}=={md.version(d)}" for d in ("torch", "transformers", "safetensors", "tokenizers")]
    mlflow.set_tracking_uri(sel.tracking_uri)
    with mlflow.start_run(experiment_id=experiment, run_name=f"export-trial-{sel.trial.number}", tags=tags) as run:
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": models.tok}, name="model", registered_model_name=name,
            task="text-classification" if models.type == "classification" else "text-generation",
            model_card=ModelCard((sel.out / "README.md").read_text(encoding="utf-8")), pip_requirements=pins)
    version = info.registered_model_version
    for key, value in tags.items():
        if not key.startswith("mlflow."):
            client.set_model_version_tag(name, str(version), key, value)
    print(f"registered {name} version {version} (run {run.info.run_id})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sel = select(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import os

    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    return export(sel, args)


if __name__ == "__main__":
    sys.exit(main())
