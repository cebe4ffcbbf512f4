"""`python -m sweeps.export` on a real (tiny, 4-bit) sweep: the merged model and the adapter come out
with a model card, reproduce the trained model's logits, shard, register in MLflow, and bad input is
rejected with exit 2 before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from sweep_helpers import REPO, TINY, env, mlflow_client, only_study, run_sweep

pytestmark = pytest.mark.timeout(1200)

DIFF = re.compile(r"max abs logit difference: (\S+) \(tolerance (\S+)\)")
REGISTERED = "tiny-sweep-winner"


def export(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.export", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env(), "PYTHONPATH": str(REPO)})


def ok(proc: subprocess.CompletedProcess) -> tuple[float, float]:
    """Exit 0 and the printed difference within the printed tolerance."""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    found = DIFF.search(proc.stdout)
    assert found, proc.stdout
    diff, tol = float(found.group(1)), float(found.group(2))
    assert diff <= tol
    return diff, tol


def sha(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert_dir) -> Path:
    cwd = tmp_path_factory.mktemp("export_sweep")
    run_sweep(cwd, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=2")
    return cwd


@pytest.fixture(scope="module")
def merged(sweep, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Best trial, merged in fp32 on the CPU, sharded at 1MB, registered: one export for several tests."""
    out = tmp_path_factory.mktemp("exports") / "merged"
    proc = export(sweep, "--out", str(out), "--merge", "--dtype", "float32", "--device", "cpu", "--max-shard-size", "1MB",
                  "--register", REGISTERED)
    return out, proc


def test_merged_export_files_and_card(sweep, merged):
    out, proc = merged
    diff, tol = ok(proc)
    assert tol == pytest.approx(1e-4)  # fp32; tiny-model logits are < 1 in magnitude
    study = only_study(sweep)
    best = study.best_trial
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()  # 1MB shards of a 4MB model
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in (out / "adapter").iterdir()}
    assert not (out / "generation_config.json").exists()  # a classifier does not generate
    from omegaconf import OmegaConf

    config = OmegaConf.load(out / "config.yaml")  # what `lora-sweep chat --model` reads
    assert config.model.name_or_path == best.params.get("model.name_or_path", config.model.name_or_path)
    assert config.task.type == "classification" and config.seed == best.user_attrs["seed"]
    assert sha(out / "adapter") == best.user_attrs["adapter_sha256"]
    card = (out / "README.md").read_text()
    for needle in (study.study_name, f"trial {best.number}", best.user_attrs["mlflow_run_id"], '"mode": "4bit"',
                   "dequantized", "Max abs logit difference", f"{diff:.3g}", "bitsandbytes"):
        assert needle in card, needle
    assert not list(out.parent.glob(".merged*")), "staging folder left behind"


def test_merged_model_reloads_with_same_predictions(sweep, merged):
    """Reference = the trained model as in training (4-bit base + adapter from the trial folder)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from sweeps.runtime.compose import ComposeSpec, compose_job
    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode, make_collator
    from trainer.models.loading import load_base_model, load_tokenizer

    out, proc = merged
    ok(proc)
    study = only_study(sweep)
    trial = study.best_trial
    spec = study.user_attrs["compose"]
    cfg = compose_job(ComposeSpec(spec["config_dir"], spec["config_name"], tuple(spec["overrides"])), trial.params)
    tok = load_tokenizer(get(cfg, "model"))
    data = encode(load_raw(get(cfg, "data"), "classification"), tok, get(cfg, "data"), get(cfg, "task"),
                  get(cfg, "train.max_seq_length"))
    batch = make_collator(tok, "classification")([{k: v for k, v in f.items() if k != "labels"}
                                                  for f in data.eval.features])
    base = load_base_model(get(cfg, "model"), get(cfg, "quant"), "classification", data.num_labels, tok.pad_token_id,
                           torch.device("cpu"), False)
    assert type(base.bert.encoder.layer[0].attention.self.query).__name__ == "Linear4bit"
    adapter = Path(study.user_attrs["trial_root"]) / f"trial_{trial.number:04d}" / "adapter"
    reference = PeftModel.from_pretrained(base, str(adapter)).eval()
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert exported.dtype == torch.float32
    assert not hasattr(exported.config, "quantization_config")
    with torch.inference_mode():
        ref, got = reference(**batch).logits, exported(**batch).logits
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert torch.allclose(ref, got, atol=1e-5, rtol=0)
    # The check has teeth: the adapter on the original fp32 checkpoint (what a naive merge builds) misses it.
    full = load_base_model(get(cfg, "model"), {"mode": "none"}, "classification", data.num_labels, tok.pad_token_id,
                           torch.device("cpu"), False)
    with torch.inference_mode():
        naive = PeftModel.from_pretrained(full, str(adapter)).eval()(**batch).logits
    assert (naive - ref).abs().max() > 1e-4


def test_register_creates_model_version(sweep, merged):
    _, proc = merged
    ok(proc)
    assert f"registered {REGISTERED} version 1" in proc.stdout
    client = mlflow_client(sweep)
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert len(versions) == 1
    study = only_study(sweep)
    version = versions[0]
    assert version.tags["optuna.study_name"] == study.study_name
    assert version.tags["optuna.trial_number"] == str(study.best_trial.number)
    run = client.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]


def test_adapter_export_downloads_from_mlflow_and_force_replaces(sweep, tmp_path):
    """No local trial folder: the adapter comes from the MLflow run, its sha256 checked; --force replaces."""
    study = only_study(sweep)
    other = next(t for t in study.trials if t.number != study.best_trial.number)
    out = tmp_path / "adapter_only"
    out.mkdir()
    (out / "old.txt").write_text("stale")
    root = Path(study.user_attrs["trial_root"])
    hidden = root.with_name(root.name + ".hidden")
    root.rename(hidden)
    try:
        proc = export(sweep, "--out", str(out), "--trial", str(other.number), "--force")
    finally:
        hidden.rename(root)
    diff, _ = ok(proc)
    assert diff == 0.0  # the same base + the same adapter
    assert not (out / "old.txt").exists()
    assert not (out / "model.safetensors").exists() and not list(out.glob("model-*.safetensors"))
    assert sha(out / "adapter") == other.user_attrs["adapter_sha256"]
    assert f"trial {other.number}" in (out / "README.md").read_text()


def _bad_input_study(sweep: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A copy of the sweep's journal plus a FAIL, a PRUNED trial and a multi-objective study."""
    journal = tmp_path / "copy.log"
    shutil.copy(sweep / "optuna-journal.log", journal)
    from sweeps.search.storage import open_storage

    storage = open_storage(str(journal))
    name = only_study(sweep).study_name
    study = optuna.load_study(study_name=name, storage=storage)
    dist = {"seed": IntDistribution(0, 3)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"seed": 1}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"seed": 2}, distributions=dist))
    numbers = {t.state.name: t.number for t in study.trials}
    mo = optuna.create_study(study_name="two-objectives", storage=storage, directions=["maximize", "minimize"])
    mo.add_trial(create_trial(values=[0.5, 10.0], params={"seed": 1}, distributions=dist))
    return journal, numbers


def test_bad_input_exits_2_and_writes_nothing(sweep, tmp_path):
    journal, numbers = _bad_input_study(sweep, tmp_path)
    name = only_study(sweep).study_name
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    new = tmp_path / "new"
    cases = [  # (args, out folder, what stderr must say)
        (["--study", "nope"], new, ["--study", "nope", name]),
        (["--study", name, "--trial", "99"], new, ["--trial", "no trial 99"]),
        (["--study", name, "--trial", str(numbers["FAIL"])], new, ["--trial", "FAIL", "best trial is"]),
        (["--study", name, "--trial", str(numbers["PRUNED"])], new, ["--trial", "PRUNED", "best trial is"]),
        ([], new, ["--trial", "two-objectives", "2 objectives"]),  # the latest study is the default
        (["--study", name], full, ["--out", "not empty", "--force"]),
        (["--register", "x"], new, ["--register", "--merge"]),
        (["--merge", "--max-shard-size", "lots"], new, ["--max-shard-size", "GB"]),
        (["--merge", "--dtype", "int4"], new, ["--dtype", "float32"]),
        (["--merge", "--device", "tpu"], new, ["--device", "cpu"]),
    ]
    procs = []
    for args, out, _ in cases:  # all at once: each is only imports + a look at the study
        cmd = [sys.executable, "-m", "sweeps.export", "--storage", str(journal), "--out", str(out), *args]
        procs.append(subprocess.Popen(cmd, cwd=sweep, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**env(), "PYTHONPATH": str(REPO)}))
    for (args, out, needles), proc in zip(cases, procs):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, stdout, stderr)
        for needle in needles:
            assert needle in stderr, (args, needle, stderr)
    assert not new.exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".", "new"))]  # no staging folder


def test_causal_lm_merge(tmp_path, tiny_llama_dir):
    run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_llama_dir}", "task=causal_lm", "hydra.sweeper.n_trials=1")
    out = tmp_path / "export"
    diff, tol = ok(export(tmp_path, "--out", str(out), "--merge"))  # bfloat16 by default
    assert tol >= 5e-2  # the bfloat16 bound
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.use_cache is True and model.dtype == torch.bfloat16
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["eos_token_id"] in (model.config.eos_token_id, [model.config.eos_token_id])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "AutoModelForCausalLM" in (out / "README.md").read_text()
