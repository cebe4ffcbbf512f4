"""No planted secret survives anywhere a real sweep leaves bytes.

Secrets go in through every door a user has: the environment (AWS keys, HF_TOKEN, one reaching
the config through `${oc.env:...}`), command-line overrides (`+model.hf_token=hf_...`,
`+train.api_key=...`, a URL with a password), a config file whose value ends up in an exception
message (a failing trial), and, when PostgreSQL is there, the storage and tracking URLs' password
(a dedicated role with a random password). Then a sweep with reproduction, the report and a single
run; then every file under the run directory, both PostgreSQL databases (pg_dump) and the console
output are searched for each secret, raw and URL-/JSON-encoded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import REPO, SWEEP, TINY, env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ALNUM = string.ascii_letters + string.digits


def _random(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _variants(secret: str) -> set[bytes]:
    forms = {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1], secret.replace("/", "\\/")}
    return {f.encode() for f in forms}


def _leaks(blob: bytes, planted: dict[str, str]) -> list[str]:
    return [name for name, secret in planted.items() if any(v in blob for v in _variants(secret))]


def _run(cmd: list[str], cwd: Path, environ: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[1:4]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


class _Postgres:
    """A role with a random password owning two fresh databases (Optuna, MLflow); dropped after."""

    def __init__(self, admin_url: str):
        import sqlalchemy

        self.admin_url, self.role = admin_url, f"ls_secret_{_random(8, string.ascii_lowercase)}"
        self.password = _random(24)
        self.databases = [f"{self.role}_optuna", f"{self.role}_mlflow"]
        self.engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
            for db in self.databases:
                conn.exec_driver_sql(f"CREATE DATABASE {db} OWNER {self.role}")

    def url(self, db: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(netloc=f"{self.role}:{self.password}@{parts.hostname}:{parts.port or 5432}",
                                         path=f"/{db}"))

    def dump(self) -> bytes:
        """Schema and every row of both databases, as the server admin sees them."""
        parts = urlsplit(self.admin_url)
        out = b""
        for db in self.databases:
            admin_db = urlunsplit(parts._replace(path=f"/{db}"))
            out += subprocess.run(["pg_dump", "--no-owner", f"--dbname={admin_db}"], check=True,
                                  capture_output=True, timeout=300).stdout
        return out

    def drop(self) -> None:
        with self.engine.connect() as conn:
            for db in self.databases:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {self.role}")
        self.engine.dispose()


def _config_dir_with_leaky_preset(dest: Path, bearer: str) -> Path:
    """The project's conf/ plus a `train` preset whose scheduler option is invalid in a way only the
    scheduler itself notices (torch echoes the value): a trial that fails with a secret in its
    message; and a copy of the default preset, so a grid of three has two good points."""
    conf = shutil.copytree(REPO / "conf", dest)
    default = (conf / "train" / "default.yaml").read_text()
    leaky = (default.replace("lr_scheduler_type: linear", "lr_scheduler_type: reduce_lr_on_plateau")
             .replace("scheduler_kwargs: {}", f"scheduler_kwargs: {{mode: 'Bearer {bearer}'}}"))
    assert leaky != default and "reduce_lr_on_plateau" in leaky and bearer in leaky
    (conf / "train" / "leaky.yaml").write_text(leaky)
    (conf / "train" / "same.yaml").write_text(default)
    return conf


def test_no_planted_secret_survives_a_sweep_with_reproduce_report_and_single_run(tmp_path, tiny_bert_dir):
    planted = {
        "env HF_TOKEN": "hf_" + _random(34),
        "env AWS_SECRET_ACCESS_KEY": _random(30) + "/" + _random(9),
        "env AWS_ACCESS_KEY_ID": "AKIA" + _random(16, string.ascii_uppercase + string.digits),
        "override +model.hf_token": "hf_" + _random(34),
        "override +train.api_key": _random(28),
        "override URL password": _random(20),
        "exception Bearer token": _random(32),
    }
    environ = env()
    environ.update(HF_TOKEN=planted["env HF_TOKEN"], AWS_SECRET_ACCESS_KEY=planted["env AWS_SECRET_ACCESS_KEY"],
                   AWS_ACCESS_KEY_ID=planted["env AWS_ACCESS_KEY_ID"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    conf = _config_dir_with_leaky_preset(tmp_path / "conf", planted["exception Bearer token"])

    pg_admin = os.environ.get("LORA_SWEEP_PG_URL")
    pg = _Postgres(pg_admin) if pg_admin else None
    try:
        if pg is not None:
            planted["PostgreSQL role password"] = pg.password
            storage, tracking = pg.url(pg.databases[0]), pg.url(pg.databases[1])
            stores = [f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}"]
        else:
            storage, tracking, stores = None, None, []
        user = [
            f"--config-path={conf}", *TINY, f"model.name_or_path={tiny_bert_dir}", *stores,
            f"+model.hf_token={planted['override +model.hf_token']}",
            f"+train.api_key={planted['override +train.api_key']}",
            f"+data.mirror_url=https://reader:{planted['override URL password']}@mirror.example/data",
            "+data.note=${oc.env:AWS_SECRET_ACCESS_KEY}",  # an env secret reaching a harmless-named key
        ]
        search = ["search_space=none", "hydra.sweeper.sampler=grid", "train=default,same,leaky",
                  "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.max_failure_rate=1.0",
                  "hydra.sweeper.study_name=secrets", "hydra.sweeper.pruner=none",
                  "hydra.sweeper.reproduce.top_k=1", "hydra.sweeper.reproduce.n_seeds=1",
                  "hydra.sweeper.reproduce.design=one_at_a_time"]
        console = _run([sys.executable, str(SWEEP), "-m", *user, *search], run_dir, environ)
        report_args = ["--study", "secrets"] + (["--storage", storage, "--tracking-uri", tracking] if pg else [])
        console_report = _run([sys.executable, "-m", "analysis.report", *report_args], run_dir,
                              dict(environ, PYTHONPATH=str(REPO)))
        console_single = _run([sys.executable, str(SWEEP), *user, "train=default"], run_dir, environ)

        # the run succeeded, and every kind of secret really went through it
        study = optuna.load_study(study_name="secrets", storage=storage or _journal(run_dir))
        states = [t.state for t in study.trials]
        assert states.count(TrialState.COMPLETE) == 2, states
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        assert len(failed) == 1, "the leaky preset must fail one trial (its grid point comes first or second)"
        assert all("Bearer ***" in t.user_attrs["fail_reason"] for t in failed), [t.user_attrs for t in failed]
        assert "+model.hf_token=***" in study.user_attrs["compose"]["overrides"]
        assert "+data.note=${oc.env:AWS_SECRET_ACCESS_KEY}" in study.user_attrs["compose"]["overrides"]
        assert optuna.load_study(study_name="secrets--reproduce", storage=storage or _journal(run_dir)).trials
        assert list((run_dir / "reports").rglob("report.md")), "no report written"
        hydra_dirs = list((run_dir / "outputs").rglob(".hydra"))
        assert hydra_dirs and (hydra_dirs[0] / "overrides.yaml").read_text().count("***") >= 3
        artifacts = [p for p in run_dir.rglob("config.yaml") if ".hydra" not in p.parts]
        assert len(artifacts) >= 5, f"the scan must see every run's config.yaml artifact, found {artifacts}"

        # every byte left behind
        leaks: dict[str, list[str]] = {}
        files = [p for p in run_dir.rglob("*") if p.is_file()]
        assert any(p.name == "mlflow.db" for p in files) or pg is not None
        for path in files:
            found = _leaks(path.read_bytes(), planted)
            if found:
                leaks[str(path.relative_to(run_dir))] = found
        if pg is not None:
            found = _leaks(pg.dump(), planted)
            if found:
                leaks["pg_dump of the Optuna and MLflow databases"] = found
        for name, proc in (("sweep console", console), ("report console", console_report),
                           ("single-run console", console_single)):
            found = _leaks((proc.stdout + proc.stderr).encode(), planted)
            if found:
                leaks[name] = found
        assert not leaks, f"secrets found in {len(files)} files scanned: {leaks}"
    finally:
        if pg is not None:
            pg.drop()


def _journal(cwd: Path):
    from sweeps.search.storage import open_storage

    return open_storage(None, cwd=cwd)
