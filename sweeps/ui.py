"""`lora-sweep ui [--port N] [--no-optuna]`: look at a sweep in the browser.

Serves the sweep's MLflow store (`mlflow server`) and, when installed, optuna-dashboard on its study,
on local ports (127.0.0.1 only); once both answer, prints the link to the sweep's runs in MLflow's
Model-training view and to the study's dashboard page; stops both on Ctrl-C or SIGTERM.

The study is found as `lora-sweep report` finds it (--storage, default ./optuna-journal.log; --study,
default the latest); the MLflow store is --tracking-uri, else the one the study recorded, else
./mlflow.db. Without a study, ./mlflow.db alone is served.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Optuna and MLflow (seconds to import) are imported where used, so that --help and a bad flag answer at once.

HOST = "127.0.0.1"
MLFLOW_PORT = 5000  # MLflow's default, the port in the link a sweep prints (sweeps.tracking.runbook.MLFLOW_UI)
OPTUNA_PORT = 8080                                # optuna-dashboard's own default
STARTUP_S = 120.0
STOP_S = 10.0
STORAGE_ENV = "LORA_SWEEP_UI_STORAGE"  # the study storage for the dashboard process (kept out of `ps`)


class BadFlag(Exception):
    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


@dataclass
class Target:
    """What to serve: the MLflow store and the sweep's experiment in it, and the Optuna study, if any."""

    tracking_uri: str
    experiment_id: str | None
    storage_url: str | None = None
    study_name: str | None = None
    study_id: int | None = None


def find_target(storage: str | None, study_name: str | None, tracking_uri: str | None) -> Target:
    """The study named on the command line (default the latest) and its MLflow store; reads only."""
    import optuna

    from analysis.tracking import resolve_tracking_uri
    from sweeps.search.storage import journal_path, latest_study_name, mask_url, open_storage, sqlite_path, storage_url

    url = storage_url(storage)
    path = journal_path(url) or sqlite_path(url)
    study = None
    if path is None or path.is_file():  # a database server, or a local store that exists
        store = open_storage(url)
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False))
        if study_name is not None and study_name not in names:
            raise BadFlag("--study", f"no study {study_name!r} in {mask_url(url)}; existing: {', '.join(names) or 'none'}")
        if study_name is None and names:
            study_name = latest_study_name(store)
        study = optuna.load_study(study_name=study_name, storage=store) if study_name else None
    elif storage is not None or study_name is not None:
        raise BadFlag("--storage", f"no Optuna store at {path}; run from the sweep's folder or pass --storage")

    recorded = study.user_attrs.get("mlflow_tracking_uri") if study else None
    uri = resolve_tracking_uri(tracking_uri, recorded)
    if uri is None:
        if study is None:
            missing = f"no Optuna journal at {path}" if path is not None and not path.is_file() else \
                f"no study in {mask_url(url)}"
            raise BadFlag("--storage", f"no sweep here: {missing} and no ./mlflow.db; run from the sweep's folder "
                                       "or pass --storage / --tracking-uri")
        raise BadFlag("--tracking-uri", f"study {study.study_name!r} recorded its MLflow store as {recorded!r}, "
                                        "which cannot be opened here; pass --tracking-uri")
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise BadFlag("--tracking-uri", f"no MLflow database at {database}")

    experiment_id = experiment_of(uri, study.user_attrs if study else {})
    if study is None:
        return Target(uri, experiment_id)
    return Target(uri, experiment_id, url, study.study_name, store.get_study_id_from_name(study.study_name))


def experiment_of(tracking_uri: str, study_attrs: dict) -> str | None:
    """The MLflow experiment of the study's parent run, else the experiment named in the study (else
    the default, lora-sweep); None when the store has neither."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = study_attrs.get("mlflow_parent_run_id")
    if parent:
        try:
            return client.get_run(str(parent)).info.experiment_id
        except MlflowException:
            pass  # not in this store (another --tracking-uri): fall back to the name
    experiment = client.get_experiment_by_name(str(study_attrs.get("mlflow_experiment_name") or "lora-sweep"))
    return experiment.experiment_id if experiment is not None else None


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(preferred: int, taken: set[int]) -> int:
    """`preferred` when nothing listens there (a stable address keeps MLflow's per-site view settings
    in the browser), else one the system picks."""
    if preferred not in taken and port_is_free(preferred):
        return preferred
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


class Server:
    """One dashboard process in its own process group (Ctrl-C at the terminal reaches only us; we stop
    it, and whatever workers it started, with SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], ready_url: str, log: Path):
        self.name, self.cmd, self.env, self.ready_url, self.log = name, cmd, env, ready_url, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_S
            while time.monotonic() < deadline and (self.proc.poll() is None or self.group_alive()):
                time.sleep(0.1)
            if not self.group_alive():
                break
        self.proc.wait()


def serve_optuna_dashboard(port: int) -> None:
    """The dashboard process: optuna-dashboard on the storage in $LORA_SWEEP_UI_STORAGE, opened as the
    sweep opens it (for a journal file, with the same lock as the sweep's workers)."""
    import optuna_dashboard

    from sweeps.search.storage import open_storage

    optuna_dashboard.run_server(open_storage(os.environ[STORAGE_ENV]), host=HOST, port=port)


def mlflow_server(target: Target, port: int, logs: Path) -> Server:
    from sweeps.tracking.runbook import artifact_root

    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": target.tracking_uri}  # the URI (a password) is kept out of `ps`
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1"]
    artifacts = artifact_root(target.tracking_uri)
    if artifacts is not None:  # a local store: its artifacts sit beside the database
        cmd += ["--artifacts-destination", artifacts]
    return Server("MLflow", cmd, env, f"http://{HOST}:{port}/health", logs / "mlflow.log")


def optuna_server(target: Target, port: int, logs: Path) -> Server:
    env = {**os.environ, STORAGE_ENV: target.storage_url}
    cmd = [sys.executable, "-c", f"from sweeps.ui import serve_optuna_dashboard; serve_optuna_dashboard({port})"]
    return Server("optuna-dashboard", cmd, env, f"http://{HOST}:{port}/api/meta", logs / "optuna-dashboard.log")


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    def port(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"a TCP port 1..65535 is required, got {text!r}")
        return int(text)

    parser = argparse.ArgumentParser(prog="lora-sweep ui", description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--port", type=port, default=None,
                        help=f"MLflow's port (default {MLFLOW_PORT} when free, else a free one)")
    parser.add_argument("--no-optuna", action="store_true", help="serve MLflow only, no optuna-dashboard")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL or journal file (default ./optuna-journal.log)")
    parser.add_argument("--study", default=None, help="study name (default: the latest search study)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the study's, unless masked; else ./mlflow.db)")
    return parser, parser.parse_args(argv)


def wait_until_ready(servers: list[Server]) -> str | None:
    """None once every server answers; else why not (a server exited, or the startup time ran out)."""
    deadline = time.monotonic() + STARTUP_S
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            if server.exited() is not None:
                return f"{server.name} exited ({server.exited()}) before answering:\n{server.log_tail()}"
            if server.answers():
                waiting.remove(server)
        if waiting and time.monotonic() > deadline:
            return f"{waiting[0].name} did not answer {waiting[0].ready_url} within {STARTUP_S:.0f}s:\n" \
                   f"{waiting[0].log_tail()}"
        time.sleep(0.3)
    return None


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    from sweeps.search.storage import mask_url
    from sweeps.tracking.runbook import runs_page_url

    if args.port is not None and not port_is_free(args.port):
        parser.error(f"argument --port: {HOST}:{args.port} is in use; pick another or leave --port out")
    try:
        target = find_target(args.storage, args.study, args.tracking_uri)
    except BadFlag as exc:
        parser.error(str(exc))

    serve_mlflow = not target.tracking_uri.startswith(("http://", "https://"))  # a server already serves it
    want_optuna = not args.no_optuna and target.study_name is not None
    if want_optuna and importlib.util.find_spec("optuna_dashboard") is None:
        print("optuna-dashboard is not installed (pip install optuna-dashboard): serving MLflow only")
        want_optuna = False
    taken: set[int] = set()
    mlflow_port = args.port or free_port(MLFLOW_PORT, taken)
    taken.add(mlflow_port)
    logs = Path(tempfile.mkdtemp(prefix="lora-sweep-ui-"))
    servers = []
    if serve_mlflow:
        servers.append(mlflow_server(target, mlflow_port, logs))
    if want_optuna:
        servers.append(optuna_server(target, free_port(OPTUNA_PORT, taken), logs))

    if not servers:  # the store has its server already, and no dashboard is wanted
        shutil.rmtree(logs, ignore_errors=True)
        print(f"MLflow runs: {runs_page_url(target.tracking_uri, target.experiment_id or '0')}")
        return 0
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the servers as Ctrl-C does
    clean = False
    try:
        for server in servers:
            server.start()
        names = " and ".join(f"{s.name} on {urlsplit(s.ready_url).netloc}" for s in servers)
        print(f"starting {names} ...", flush=True)
        problem = wait_until_ready(servers)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        base = f"http://{HOST}:{mlflow_port}" if serve_mlflow else target.tracking_uri
        where = f"study {target.study_name}, " if target.study_name else ""
        if target.experiment_id is not None:
            print(f"MLflow runs: {runs_page_url(base, target.experiment_id)}  ({where}store {mask_url(target.tracking_uri)})")
        else:
            print(f"MLflow: {base.rstrip('/')}/#/experiments  (no sweep experiment in {mask_url(target.tracking_uri)})")
        if want_optuna:
            print(f"Optuna: http://{urlsplit(servers[-1].ready_url).netloc}/dashboard/studies/{target.study_id}")
        elif target.study_name is None:
            print("Optuna: no study here (pass --storage to show one)")
        print("Ctrl-C stops " + ("both" if len(servers) > 1 else "it"), flush=True)
        while True:
            for server in servers:
                if server.exited() is not None:
                    print(f"error: {server.name} stopped ({server.exited()}):\n{server.log_tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        clean = True
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        for server in servers:
            server.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if clean:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"server logs: {logs}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
