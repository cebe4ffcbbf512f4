"""`lora-sweep ui`: serves a real sweep's MLflow store and optuna-dashboard on local ports, prints links
that open the sweep's runs (the parent run with its trial runs nested under it, in a fresh Chromium
profile) and its study, and stops both servers on Ctrl-C or SIGTERM (their ports close, their
processes are gone); a bad flag exits 2 naming it, before anything starts.

The browser test needs Debian's chromium + chromium-driver and Selenium: `bash .ci/browser-deps.sh`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest

from browser_helpers import BROWSER_MARKS, fresh_chromium
from sweep_helpers import TINY, env, run_sweep, runs

pytestmark = pytest.mark.timeout(900)

N_TRIALS = 3
READY_S = 240  # the servers start in seconds; a busy 2-core machine makes it a minute or more
WAIT_S = 60    # for any one element of a rendered page


try:
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # BROWSER_MARKS skip the browser tests and say why
    pass


def needs_browser(test):
    for mark in BROWSER_MARKS:
        test = mark(test)
    return test


def ui_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.ui", *args]


class Ui:
    """`lora-sweep ui` in its own process group, as a terminal runs a foreground job; its output is
    read as it comes (a thread), so waiting for a line never blocks."""

    def __init__(self, cwd: Path, *args: str):
        self.proc = subprocess.Popen(ui_command(*args), cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> str:
        """Its output up to the "Ctrl-C stops" line it prints once both servers answer."""
        deadline = time.monotonic() + READY_S
        while "Ctrl-C stops" not in self.out:
            assert self.proc.poll() is None, f"lora-sweep ui exited ({self.proc.returncode}):\n{self.out}"
            assert time.monotonic() < deadline, f"lora-sweep ui not ready after {READY_S}s:\n{self.out}"
            time.sleep(0.2)
        return self.out

    def servers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int) -> int:
        os.killpg(self.proc.pid, sig)  # Ctrl-C: the signal goes to the foreground process group
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        for child in self.servers() if self.proc.poll() is None else []:
            child.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def links(out: str) -> tuple[str, str]:
    mlflow = re.search(r"^MLflow runs: (http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning)\s",
                       out, re.MULTILINE)
    dashboard = re.search(r"^Optuna: (http://127\.0\.0\.1:\d+/dashboard/studies/\d+)$", out, re.MULTILINE)
    assert mlflow and dashboard, out
    return mlflow.group(1), dashboard.group(1)


def assert_stopped(ui: Ui, servers: list[psutil.Process], ports: list[int]) -> None:
    assert servers, "the ui started no server processes"
    gone, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    assert not any(port_open(port) for port in ports), (ports, ui.out)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("ui_sweep")
    run_sweep(root, *TINY, f"model.name_or_path={tiny_bert_dir}", f"hydra.sweeper.n_trials={N_TRIALS}",
              "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none")
    return root


@pytest.fixture
def browser():
    with fresh_chromium(WAIT_S) as driver:  # fresh: no view settings kept from earlier visits
        yield driver


def wait_for(driver, condition, what: str):
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5, ignored_exceptions=(WebDriverException,)).until(condition)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text[:3000]
        raise AssertionError(f"timed out waiting for {what} at {driver.current_url}:\n{body}") from None


def row_text(driver, run_id: str) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, f"[role='row'][row-id='{run_id}']"))


@pytest.mark.slow
@needs_browser
def test_the_printed_links_show_the_sweep_and_ctrl_c_stops_both(sweep_dir: Path, browser):
    _, parents, children = runs(sweep_dir)
    (parent,) = parents
    assert len(children) == N_TRIALS
    ui = Ui(sweep_dir)
    try:
        runs_link, dashboard_link = links(ui.wait_ready())
        servers = ui.servers()
        driver = browser

        # MLflow, in the Model-training view, through the printed link: the parent run, its trials under it.
        driver.get(runs_link)
        wait_for(driver, lambda d: parent.info.run_name in row_text(d, parent.info.run_id), "the parent run's row")
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):  # MLflow's assistant panel
            if button.is_displayed():
                button.click()
        if not row_text(driver, children[0].info.run_id):
            wait_for(driver, lambda d: d.find_element(
                By.CSS_SELECTOR, f"[role='row'][row-id='{parent.info.run_id}'] [col-id='attributes.`Run Name`'] button"),
                "the parent's expand button").click()
        for child in children:
            wait_for(driver, lambda d, c=child: c.info.run_name in row_text(d, c.info.run_id),
                     f"the trial run {child.info.run_name!r} under the parent")

        # optuna-dashboard, through the printed link: the study's page.
        driver.get(dashboard_link)
        wait_for(driver, lambda d: parent.info.run_name in d.find_element(By.TAG_NAME, "body").text,
                 "the study's name on its dashboard page")

        ports = [int(re.search(r":(\d+)/", link).group(1)) for link in (runs_link, dashboard_link)]
        assert ui.stop(signal.SIGINT) == 0, ui.out
        assert "stopping" in ui.out
        assert_stopped(ui, servers, ports)
    finally:
        ui.kill()


@pytest.mark.slow
def test_port_flag_no_optuna_and_sigterm(sweep_dir: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ui = Ui(sweep_dir, "--port", str(port), "--no-optuna")
    try:
        out = ui.wait_ready()
        assert f"MLflow runs: http://127.0.0.1:{port}/#/experiments/" in out and "Optuna:" not in out, out
        assert answers(f"http://127.0.0.1:{port}/health")
        servers = ui.servers()
        assert ui.stop(signal.SIGTERM) == 0, ui.out
        assert_stopped(ui, servers, [port])
    finally:
        ui.kill()


def bad(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(ui_command(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_bad_flags_exit_2_naming_the_flag(tmp_path):
    assert "--bogus" in bad(tmp_path, "--bogus").stderr
    assert "argument --port: a TCP port 1..65535 is required, got 'abc'" in bad(tmp_path, "--port", "abc").stderr
    assert "argument --port" in bad(tmp_path, "--port", "70000").stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"argument --port: 127.0.0.1:{port} is in use" in bad(tmp_path, "--port", str(port)).stderr


def test_mlflow_gets_the_port_of_the_link_a_sweep_prints():
    from urllib.parse import urlsplit

    from sweeps.tracking.runbook import MLFLOW_UI
    from sweeps.ui import MLFLOW_PORT

    assert urlsplit(MLFLOW_UI).port == MLFLOW_PORT


def test_no_sweep_here_names_what_to_pass(tmp_path):
    err = bad(tmp_path).stderr
    assert "argument --storage: no sweep here" in err and "--tracking-uri" in err, err
    assert not any(tmp_path.iterdir())  # looking created no store
    err = bad(tmp_path, "--storage", str(tmp_path / "elsewhere.log")).stderr
    assert "argument --storage: no Optuna store at" in err, err


def test_unknown_study_names_the_existing_ones(tmp_path):
    from sweeps.search.storage import open_storage

    optuna.create_study(study_name="mine", storage=open_storage(None, cwd=tmp_path))
    err = bad(tmp_path, "--study", "theirs").stderr
    assert "argument --study: no study 'theirs'" in err and "existing: mine" in err, err
