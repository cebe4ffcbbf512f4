"""The full report from a realistic journal-file study, its reproduce companion and a real MLflow store."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution as Cat
from optuna.distributions import FloatDistribution as Flt
from optuna.distributions import IntDistribution as Int
from optuna.trial import TrialState, create_trial

from analysis import sections
from analysis.frames import mlflow_runs_frame
from analysis.report import ALL_PNGS, build_report, main
from analysis.tracking import resolve_tracking_uri
from sweeps.search.storage import open_storage

NAME = "lora-demo"
DISTS = {"lora.r": Cat([4, 8, 16]), "lora.lora_alpha": Cat([8, 16, 32]), "lora.lora_dropout": Flt(0.0, 0.2),
         "lora.target_modules": Cat(["qv", "attn", "attn_mlp"]), "train.learning_rate": Flt(5e-4, 1e-2, log=True),
         "train.lr_scheduler_type": Cat(["linear", "cosine"]), "seed": Int(0, 4)}
ENV = {"torch": "2.13.0", "cuda": "12.8", "bitsandbytes": "0.50.1", "transformers": "5.24.0", "peft": "0.21.0",
       "device": "NVIDIA H100 80GB HBM3"}
HEADINGS = [sections.SUMMARY, sections.LEADERBOARD, sections.IMPORTANCE, sections.FIGURES, sections.MORE_TRIALS,
            sections.REPRODUCIBILITY, sections.WINNERS_CURSE, sections.RANK_STABILITY, sections.SIGNIFICANCE,
            sections.SEED_KINDS_HEADING, sections.DETERMINISM]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def _search_trials(study: optuna.Study, client: MlflowClient, exp: str, parent: str, rng: np.random.Generator) -> None:
    for i in range(12):
        p = {"lora.r": [4, 8, 16][i % 3], "lora.lora_alpha": [8, 16, 32][(i // 3) % 3],
             "lora.lora_dropout": float(rng.uniform(0, 0.2)),
             "lora.target_modules": ["qv", "attn", "attn_mlp"][(i // 2) % 3],
             "train.learning_rate": float(10 ** rng.uniform(np.log10(5e-4), -2)),
             "train.lr_scheduler_type": ["linear", "cosine"][i % 2], "seed": i % 5}
        acc = round(0.70 + 0.01 * p["lora.r"] ** 0.5 + 0.02 * rng.standard_normal(), 4)
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "optuna.trial_number": str(i),
                                           "optuna.study_name": NAME}).info.run_id
        study.add_trial(create_trial(
            params=p, distributions=DISTS, value=acc, intermediate_values={10: acc - 0.05, 20: acc},
            user_attrs={"mlflow_run_id": run, "trainable_params": 768 * p["lora.r"] * (2 + i % 3),
                        "total_params": 22_700_000, "train_runtime_s": 31.5, "adapter_sha256": f"sha{i}",
                        "metrics": {"eval_accuracy": acc, "eval_macro_f1": acc - 0.01, "eval_loss": 1 - acc}}))
    few = {k: DISTS[k] for k in ("lora.r", "train.learning_rate")}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lora.r": 4, "train.learning_rate": 1e-3},
                                 distributions=few, intermediate_values={10: 0.5}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lora.r": 16, "train.learning_rate": 9e-3},
                                 distributions=few, user_attrs={"fail_reason": "CUDA out of memory"}))


def _replicates(storage, study: optuna.Study, rng: np.random.Generator) -> None:
    rep = optuna.create_study(storage=storage, study_name=NAME + "--reproduce", direction="maximize")
    top = sorted(study.get_trials(states=[TrialState.COMPLETE]), key=lambda t: -t.value)[:3]
    for rank, t in enumerate(top):
        draws = ([("seed", s, 0) for s in (101, 102, 103)] + [("data_seed", 0, s) for s in (201, 202, 203)]
                 + [("both", s, s) for s in (301, 302)])
        for kind, seed, data_seed in draws:
            v = round(t.value - 0.015 - 0.005 * rank + 0.01 * rng.standard_normal(), 4)
            rep.add_trial(create_trial(value=v, user_attrs={
                "replicates_trial": t.number, "seed": seed, "data_seed": data_seed, "seed_kind": kind,
                "metrics": {"eval_accuracy": v}, "environment": ENV, "deterministic": "warn_only",
                "mlflow_run_id": f"rep-{t.number}-{seed}-{data_seed}"}))
        if rank < 2:  # the winner re-runs bit-identically, the runner-up drifts
            v = t.value if rank == 0 else t.value + 0.002
            rep.add_trial(create_trial(value=v, user_attrs={
                "replicates_trial": t.number, "seed": t.params["seed"], "data_seed": 0, "seed_kind": "determinism",
                "metrics": {**t.user_attrs["metrics"], "eval_accuracy": v}, "environment": ENV,
                "deterministic_algorithms": True,
                "adapter_sha256": t.user_attrs["adapter_sha256"] if rank == 0 else "x"}))
    rep.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"replicates_trial": top[0].number,
                                                                   "seed_kind": "seed", "fail_reason": "OOM"}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Journal-file study + reproduce study + sqlite MLflow store with a parent run, as the sweep leaves them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("lora-sweep", artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name=NAME).info.run_id
    journal = root / "optuna-journal.log"
    storage = open_storage(str(journal))
    study = optuna.create_study(storage=storage, study_name=NAME, direction="maximize")
    attrs = {"objective_metric": "eval_accuracy", "directions": ["maximize"], "mlflow_tracking_uri": uri,
             "mlflow_experiment_name": "lora-sweep", "mlflow_parent_run_id": parent, "seed_tuned": True,
             "search_space": {"lora.r": "choice(4, 8, 16)", "seed": "range(0, 4)"}}
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    rng = np.random.default_rng(0)
    _search_trials(study, client, exp, parent, rng)
    _replicates(storage, study, rng)
    out = build_report(storage, NAME, root / "report")
    return {"root": root, "uri": uri, "parent": parent, "journal": journal, "out": out, "client": client}


def test_report_files_and_sections(sweep):
    out: Path = sweep["out"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for heading in HEADINGS:
        assert f"# {heading}\n" in md or f"## {heading}\n" in md or f"### {heading}\n" in md, heading
        assert re.search(rf"<h[23]>{re.escape(heading.replace(chr(39), '&#x27;'))}</h[23]>", page), heading
    assert sections.SKIPPED not in md                                 # everything had enough data
    pngs = sorted(out.glob("*.png"))
    assert sorted(p.name for p in pngs) == sorted(ALL_PNGS)
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not EXTERNAL.search(page) and "<link" not in page and "<script" not in page


def test_report_content(sweep):
    md = (sweep["out"] / "report.md").read_text()
    assert "12 complete, 1 pruned, 1 failed" in md and "CUDA out of memory" in md
    # the seed and data_seed replicates each keep one of the trial's own (lucky) seeds: only the 2 `both` count
    assert "optimistically biased" in md and "Reproduced mean over 2 replicate(s) that re-drew both of the trial's seeds" in md
    assert "(seed and data_seed replicates left out: each keeps one of the trial's own seeds" in md
    assert "Kendall's τ" in md and "One-sided Welch test of the winner's lead" in md
    assert "P(a run of the winner beats a run of the runner-up, each on its own seeds)" in md
    assert "Power of 2 independent replicates per config" in md
    assert "95% Welch t-interval" in md
    assert "1 of 2 re-run(s) with the original seeds reproduced every metric bit for bit" in md
    assert "NVIDIA H100 80GB HBM3" in md
    # what was really enforced, not "deterministic algorithms on": CUDA runs only warned, also the
    # two re-runs that recorded only the old boolean (their environment had CUDA 12.8)
    assert "Determinism enforced in the replicate runs: warn_only in 26 of 26." in md
    assert "bitwise equality of re-runs is not guaranteed" in md
    # the pruned trial counts at its last value (dropping it would keep only the survivors)
    assert "Going from 6 to 13 trials" in md and "cannot look past 13" in md
    assert "1 pruned at their last reported value" in md and "not i.i.d. draws" in md
    assert "| fANOVA | PED-ANOVA |" in md


def test_report_logged_to_parent_run(sweep):
    client: MlflowClient = sweep["client"]
    logged = {Path(a.path).name for a in client.list_artifacts(sweep["parent"], "report")}
    assert {"report.md", "report.html", *ALL_PNGS} <= logged


def test_mlflow_child_runs_frame(sweep):
    runs = mlflow_runs_frame(sweep["uri"], ["lora-sweep"], study_name=NAME, parent_run_id=sweep["parent"])
    assert sorted(runs["trial_number"].astype(int)) == list(range(12))


def test_cli_defaults_to_cwd_journal_and_latest_study(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--no-mlflow"]) == 2 and not (tmp_path / "optuna-journal.log").exists()  # nothing created
    storage = open_storage(None)                                  # ./optuna-journal.log, as the sweep writes it
    _tiny(storage, "older", 1, ["maximize"])
    _tiny(storage, "newer", 1, ["maximize"])
    optuna.create_study(storage=storage, study_name="newer--reproduce")  # companions are never "latest"
    assert main(["--no-mlflow"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == Path("reports") / "newer" and (tmp_path / out / "report.html").exists()
    assert main(["--study", "older", "--out", "elsewhere", "--no-mlflow"]) == 0
    assert (tmp_path / "elsewhere" / "report.md").exists()
    assert main(["--study", "missing", "--no-mlflow"]) == 2


def test_tracking_uri_resolution(tmp_path):
    assert resolve_tracking_uri("sqlite:///x.db", None, tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri(None, "postgresql://u:***@h/db", tmp_path) is None     # masked, no ./mlflow.db
    assert resolve_tracking_uri(None, "http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    (tmp_path / "mlflow.db").touch()
    assert resolve_tracking_uri(None, "postgresql://u:***@h/db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tiny(storage, name: str, n: int, directions: list[str]) -> None:
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    dists = {"lora.r": Cat([4, 8, 16]), "lora.alpha_ratio": Cat([1.0, 2.0])}
    for i in range(n):
        values = [0.6 + 0.05 * i] + ([1000.0 * (i + 1)] if len(directions) > 1 else [])
        params = {"lora.r": [4, 8, 16][i % 3], "lora.alpha_ratio": [1.0, 2.0][i % 2]}
        study.add_trial(create_trial(params=params, distributions=dists, values=values,
                                     user_attrs={"trainable_params": 1000 * (i + 1)}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"}))


@pytest.mark.parametrize("n, directions", [(0, ["maximize"]), (1, ["maximize"]), (3, ["minimize", "minimize"])])
def test_small_studies_still_report(tmp_path, n, directions, caplog):
    storage = optuna.storages.InMemoryStorage()
    _tiny(storage, f"tiny{n}", n, directions)
    out = build_report(storage, f"tiny{n}", tmp_path / "r", log_to_mlflow=True)  # no parent run: warns, no crash
    md = (out / "report.md").read_text()
    assert sections.SUMMARY in md and sections.REPRODUCIBILITY in md and "No reproduce study" in md
    assert "not logged to MLflow" in caplog.text
    if n < 2:
        assert sections.SKIPPED in md and "Importance skipped" in md
    else:  # alpha = alpha_ratio · r; the second objective counts as the adapter size
        assert (out / "rank_alpha_heatmap.png").exists() and (out / "expected_max.png").exists()
        assert (out / "pareto.png").exists() and "(minimize)" in md
    assert not EXTERNAL.search((out / "report.html").read_text())


def test_crossed_reproduction_report_shows_components_with_intervals_and_n(tmp_path):
    """A crossed replication (2 configs × 3 init × 3 data-order seeds) where init seeds dominate:
    the report shows the variance table with intervals, df and n, the per-config intervals on
    the grid's df, and tests the lead on the paired seed cells."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="x", direction="maximize")
    study.set_user_attr("objective_metric", "eval_accuracy")
    dists = {"train.learning_rate": Flt(1e-4, 1e-2, log=True)}
    for i, value in enumerate((0.90, 0.85, 0.70)):
        study.add_trial(create_trial(params={"train.learning_rate": 1e-3 * (i + 1)}, distributions=dists, value=value,
                                     user_attrs={"seed": 0, "data_seed": 0}))
    rep = optuna.create_study(storage=storage, study_name="x--reproduce", direction="maximize")
    init, order = [0.06, -0.05, 0.0], [0.004, -0.003, 0.0]
    for config, effect in ((0, 0.82), (1, 0.80)):
        for i in range(3):
            for j in range(3):
                v = effect + init[i] + order[j] + 0.001 * ((i * 3 + j + config) % 4)
                rep.add_trial(create_trial(value=v, user_attrs={
                    "replicates_trial": config, "seed_kind": "crossed", "seed": 10_000 + i, "data_seed": 10_000 + j}))
    md = (build_report(storage, "x", tmp_path / "r", log_to_mlflow=False) / "report.md").read_text()
    assert "n = 18 runs: #0: 3 × 3, #1: 3 × 3" in md
    rows = re.findall(r"^\| (init seed|data order|interaction \+ residual) \| 18 \| ([^|]+) \| ([^|]+) \| ([^|]+) \|"
                      r" [^|]+ \| (\d+) \|$", md, re.M)
    assert [(r[0], r[4]) for r in rows] == [("init seed", "4"), ("data order", "4"), ("interaction + residual", "8")]
    low, high = float(rows[0][2]), float(rows[0][3])
    assert 0 < low <= float(rows[0][1]) <= high  # init seeds dominate: its interval is above 0
    assert "The initialisation seed contributes more variance than data order" in md
    # per-config means: n = 9 and the crossed grid's Satterthwaite df (far below the 8 of 9 independent runs)
    per_config = re.findall(r"^\| (0|1) \| [^|]+ \| 9 \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| ([^|]+) \|", md, re.M)
    assert len(per_config) == 2 and all(float(df) < 3 for _, df in per_config)
    assert "paired on the 9 seed cells both ran (n = 9)" in md and "One-sided paired test of the winner's lead" in md
