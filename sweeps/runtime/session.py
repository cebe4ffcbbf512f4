"""One sweep session on this machine: study + MLflow parent, workers, the steps after the search
(race, reproduction: passed in by the caller), summary."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from sweeps.runtime.compose import ComposeSpec
from sweeps.progress import SweepProgress, base_text, console, gain_over_base, top_trials_table
from sweeps.search.pruning import prune_guard
from sweeps.seed_stats import interval_text
from sweeps.tracking.redact import redact, redact_override
from sweeps.search.samplers import kwargs_of
from sweeps.search.space import SearchSpace, base_params
from sweeps.search.startup import DEFAULT_STARTUP, enqueue_informed_startup, informed_trials, why_not_sampler
from sweeps.search.storage import MEMORY_SKIP_ATTR, STORE_RETRY_S, mask_url, open_storage, storage_url
from sweeps.search.study import TrialBudget, fail_orphaned_trials, open_study, process_started
from sweeps.runtime.supervisor import Outcome, Supervisor, SweepAborted
from sweeps.tracking.runbook import RunBook, json_text, runs_page_url
from sweeps.runtime.worker import WorkerSpec
from sweeps.runtime.worker_plan import WorkerPlan, plan_for
from trainer import trace


AfterSearch = Callable[[optuna.Study, Any, "SweepSession", RunBook], Any]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; SLURM preemption or time limit, kill, spot reclaim


@contextmanager
def ctrl_c_deferred():
    """Hold Ctrl-C and SIGTERM back until the block is done, then raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


@contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM stops a sweep as Ctrl-C does (workers checkpoint their trials, runs are closed)
    instead of killing the sweep process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SweepSession:
    """One sweep process's part of a study: opens it (and the base trial), starts the workers and
    the MLflow parent, supervises the search, then the race or reproduction and the summary."""

    def __init__(self, conf: DictConfig, job: DictConfig | None, space: SearchSpace, compose: ComposeSpec, *, url: str,
                 study_name: str, objectives: list[str], directions: list[str], tracking_uri: str, trial_root: str,
                 largest_mb: float | None = None, after_search: Sequence[AfterSearch] = ()):
        """`conf` is hydra.sweeper, `job` the composed job config (None when reproducing a stored
        study), `compose` how a trial config is composed; the rest say where the study and the
        runs live. `after_search`: what runs once the search ends uninterrupted, in order, each
        called as step(study, storage, session, runbook) (the seed race, the reproduction: they
        are clients of the session, which imports neither)."""
        self.conf, self.job, self.space, self.compose = conf, job, space, compose
        self.largest_mb = largest_mb  # the pre-flight's memory estimate of the largest trial (auto packing)
        self.url, self.study_name, self.objectives, self.directions = url, study_name, objectives, directions
        self.tracking_uri, self.trial_root = tracking_uri, trial_root
        self.after_search = tuple(after_search)

    def run(self) -> None:
        with sigterm_as_ctrl_c():
            self._run()

    def _run(self) -> None:
        conf = self.conf
        n_trials = int(conf.n_trials)
        storage = open_storage(self.url, heartbeat_interval=self._heartbeat(), retry_s=self.store_retry_s)
        study = open_study(storage, self.study_name, self.directions)
        self.fail_orphans(study, max_retry=int(conf.max_retry))
        self._describe(study)
        with TrialBudget(study, self.url, 0, retry_s=self.store_retry_s).locked():  # once, even if machines start at once
            base = self.enqueue_base(study) if conf.get("include_base", True) else None
            if conf.get("startup", DEFAULT_STARTUP) == "informed":
                self.enqueue_startup(study, base)
        deadline = time.time() + float(conf.timeout) if conf.timeout is not None else None
        specs = self.worker_specs(self.study_name, n_trials, self.space, self.objectives,
                                  session_index=self._register_session(study, n_trials), deadline=deadline)
        where = f"{len(specs)} worker(s)" + (f" on GPUs {', '.join(s.cuda_device for s in specs)}" if specs[0].cuda_device
                                            else f", {specs[0].threads} CPU thread(s) each")
        limit = f", for at most {float(conf.timeout):g} s" if deadline else ""
        console.print(f"search: {n_trials} trials{limit}, {where}")
        for line in self.plan(n_trials).lines:
            console.print(f"  {line}")
        trace.mark("sweep.startup")  # process start to here: imports, Hydra, pre-flight, study
        supervisor = self.supervisor(study, None, specs, n_trials).start()
        runbook = None
        try:
            with ctrl_c_deferred():  # an interrupted schema migration would leave a broken MLflow store
                runbook = RunBook(self.tracking_uri, str(self.job.mlflow.experiment_name), retry_s=self.store_retry_s)
                with TrialBudget(study, self.url, n_trials).locked():  # one parent even if machines start at once
                    parent = runbook.open_parent(self.study_name, study.user_attrs.get("mlflow_parent_run_id"),
                                                 params=self._parent_params(), tags=self._parent_tags())
                    study.set_user_attr("mlflow_parent_run_id", parent)
        except KeyboardInterrupt:  # held back until the store was consistent
            supervisor.attach(runbook)
            supervisor.stop_all("interrupted: the sweep was stopped (Ctrl-C)", preempt=True)
            if runbook is not None and runbook.parent_run_id:
                self._finish(study, runbook, "KILLED")
            raise SystemExit("sweep interrupted; finished trials are kept. Rerun the same command to resume.") from None
        except BaseException:
            supervisor.stop_all("the sweep process failed to open the MLflow store")
            raise
        supervisor.attach(runbook)
        console.print(f"[bold]MLflow parent run[/] {parent} (experiment {self.job.mlflow.experiment_name!r})")
        try:
            self.close_dead_runs(study, runbook)
        except Exception as exc:  # the workers are running: tidying up old runs must not orphan them
            console.print(f"[yellow]could not close the MLflow runs a dead sweep left RUNNING: {exc}")
        status = "FINISHED"
        try:
            outcome = self.watch(supervisor, study, n_trials, "search")
            if outcome.retired_workers:  # the plan shrank: say so where the plan was shown
                console.print(f"[yellow]out of memory repeated on a shared GPU; retired {', '.join(outcome.retired_workers)}")
                runbook.set_tags(parent, {"sweep.retired_workers": "; ".join(outcome.retired_workers)})
            if outcome.interrupted:
                status = "KILLED"
            else:
                for step in self.after_search:  # the race, the reproduction: each decides from conf
                    step(study, storage, self, runbook)
        except SweepAborted as exc:
            status = "FAILED"
            self._finish(study, runbook, status)
            raise SystemExit(f"sweep aborted: {exc}") from None
        except BaseException:
            status = "FAILED"
            runbook.close_all("FAILED", "the sweep process failed")
            self._finish(study, runbook, status)
            raise
        self._finish(study, runbook, status)
        if status == "KILLED":
            raise SystemExit("sweep interrupted; finished trials are kept. Rerun the same command to resume.")

    # -- search ---------------------------------------------------------------------------------
    def enqueue_base(self, study: optuna.Study) -> dict[str, Any] | None:
        """The config the user ran the sweep from (defaults + overrides) as the first trial, so the
        winner is never worse than where they started; once per study, and only when every swept
        value of it lies inside the search space. Returns its params when the study has it."""
        for trial in study.get_trials(deepcopy=False):
            if trial.user_attrs.get("base"):
                return dict(trial.params) or base_params(self.job, self.space)[0]
        if str(self.conf.sampler) == "grid":
            console.print("base config: not enqueued with sampler=grid (the grid decides every trial)")
            return None
        params, outside = base_params(self.job, self.space)
        if not outside and self.space.custom is not None:  # the function's keys at their base values too
            from sweeps.search.custom_space import base_values

            extra, outside = base_values(self.space.custom, self.job, self.space.distributions,
                                         dict(self.space.fixed), params)
            params.update(extra)
        if outside:
            console.print(f"[yellow]base config: not a trial, it lies outside the search space ({'; '.join(outside)})")
            return None
        study.enqueue_trial(params, user_attrs={"base": True})
        console.print("base config: enqueued as the first trial (hydra.sweeper.include_base=false to skip it)")
        return params

    def enqueue_startup(self, study: optuna.Study, base: dict[str, Any] | None) -> None:
        """hydra.sweeper.startup=informed: the prior's config with the learning rate spread over
        its range, after the base trial (sweeps/search/startup.py); once per study."""
        reason = why_not_sampler(self.conf.sampler)
        if reason:
            console.print(f"informed start-up: {reason}")
            return
        n = informed_trials(kwargs_of(self.conf.sampler_kwargs), int(self.conf.n_trials))
        _, message = enqueue_informed_startup(study, self.space, n, base)
        console.print(message)

    def worker_specs(self, study_name: str, n_trials: int, space: SearchSpace, objectives: list[str],
                     replay_only: bool = False, session_index: int = 0,
                     deadline: float | None = None) -> list[WorkerSpec]:
        conf = self.conf
        plan = self.plan(n_trials)
        total_steps = None if replay_only else self.base_total_steps()
        return [WorkerSpec(worker_id=i, study_name=study_name, storage_url=self.url, n_trials=n_trials, space=space,
                           compose=self.compose, objectives=objectives, trial_root=self.trial_root,
                           sampler=str(conf.sampler), sampler_seed=conf.sampler_seed,
                           sampler_kwargs=kwargs_of(conf.sampler_kwargs),
                           pruner=str(conf.pruner), pruner_kwargs=kwargs_of(conf.pruner_kwargs),
                           cuda_device=device, threads=plan.threads, oom_retry=bool(conf.oom_retry),
                           heartbeat_interval=self._heartbeat(), replay_only=replay_only,
                           session_index=session_index, deadline=deadline, sweep_pid=os.getpid(),
                           sweep_started=process_started(os.getpid()), store_retry_s=self.store_retry_s,
                           objective_at=str(conf.get("objective_at", "best")), prune_guard=prune_guard(conf),
                           base_total_steps=total_steps,
                           shares_device=device is not None and plan.cuda_devices.count(device) > 1,
                           max_memory_gb=None if conf.get("max_memory_gb") is None else float(conf.max_memory_gb),
                           failure_limit=float(conf.max_failure_rate) * n_trials)
                for i, device in enumerate(plan.cuda_devices)]

    def base_total_steps(self) -> int | None:
        """Optimizer steps of the base config (its data size from the pre-flight, cached)."""
        import trainer
        from trainer.config import get
        from trainer.training.loop import LoopPlan

        try:
            return LoopPlan.build(get(self.job, "train"), trainer.preflight(self.job).num_train).total_steps
        except Exception:  # noqa: BLE001 - without it Hyperband keeps Optuna's own first rung
            return None

    @property
    def store_retry_s(self) -> float:
        return float(self.conf.get("store_retry_s", STORE_RETRY_S))

    # -- resuming after the sweep process itself died ----------------------------------------------
    def open_companion(self, study: optuna.Study, storage, suffix: str, runbook: RunBook) -> optuna.Study:
        """The study of the race or the reproduction beside `study` (`<name><suffix>`), so the
        search's sampler never learns from replicates. On a resume after the sweep process died
        there, its RUNNING trials become FAIL and their MLflow runs are closed; it carries the
        search's objective and MLflow attrs, which the report and export read."""
        companion = open_study(storage, study.study_name + suffix, [study.directions[0].name.lower()])
        self.fail_orphans(companion, max_retry=None)
        self.close_dead_runs(companion, runbook)
        for key in ("objective_metric", "mlflow_parent_run_id", "mlflow_tracking_uri", "mlflow_experiment_name"):
            if key in study.user_attrs:
                companion.set_user_attr(key, study.user_attrs[key])
        return companion

    def fail_orphans(self, study: optuna.Study, max_retry: int | None) -> list[int]:
        """A resume after a kill -9 / OOM kill / reboot of the sweep process: its RUNNING trials
        become FAIL and (search only, `max_retry`) are re-enqueued with the same params; the
        reproduction re-enqueues its failed replicates itself. Under the budget lock, so two
        machines resuming at once enqueue each trial once."""
        with TrialBudget(study, self.url, 0, retry_s=self.store_retry_s).locked():
            orphans = fail_orphaned_trials(study, max_retry=max_retry)
        if orphans:
            console.print(f"[yellow]{study.study_name}: {len(orphans)} RUNNING trial(s) of a dead sweep process "
                          f"marked FAIL{' and queued again' if max_retry else ''}: {orphans}")
        return orphans

    def close_dead_runs(self, study: optuna.Study, runbook: RunBook, other_host_grace_s: float = 600.0) -> list[str]:
        """MLflow runs of `study`'s trials left RUNNING by a sweep process that died: closed with
        the state Optuna has for the trial (FINISHED with its final metrics, KILLED if pruned,
        FAILED with the reason). A run whose trial is still RUNNING, or whose owner is alive on
        this host, is left alone; another host's, only once its trial ended `other_host_grace_s`
        ago (its own sweep would have closed it by then)."""
        from sweeps.search.study import owner_gone

        runs = [r for r in runbook.running_children() if r.data.tags.get("optuna.study_name") == study.study_name]
        if not runs:
            return []
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        closed = []
        for run in runs:
            trial = trials.get(int(run.data.tags.get("optuna.trial_number", -1)))
            if trial is None or trial.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            attrs = trial.user_attrs
            if attrs.get("host") == socket.gethostname():
                if not owner_gone(attrs):
                    continue
            elif trial.datetime_complete is None or time.time() - trial.datetime_complete.timestamp() < other_host_grace_s:
                continue
            reason = "closed on resume: the sweep process that ran this trial died before closing its run"
            tags = {"optuna.state": trial.state.name, "sweep.end_reason": reason}
            metrics = None
            if trial.state == TrialState.COMPLETE:
                status = "FINISHED"
                metrics = {k: float(v) for k, v in (attrs.get("metrics") or {}).items() if isinstance(v, (int, float))}
            elif trial.state == TrialState.PRUNED:
                status, tags["pruned"] = "KILLED", "true"
            else:
                status, tags["error"] = "FAILED", str(attrs.get("fail_reason", reason))[:4000]
            runbook.close_run(run.info.run_id, status, metrics, tags)
            closed.append(run.info.run_id)
        if closed:
            console.print(f"[yellow]{study.study_name}: closed {len(closed)} MLflow run(s) a dead sweep left RUNNING")
        return closed

    def _register_session(self, study: optuna.Study, n_trials: int) -> int:
        """This sweep process's index on the study (0 on a fresh store; a resume or a second machine
        gets the next), counted under the budget lock: it salts the workers' sampler seeds."""
        with TrialBudget(study, self.url, n_trials).locked():
            index = int(study.user_attrs.get("sweep_sessions", 0))
            study.set_user_attr("sweep_sessions", index + 1)
        return index

    def plan(self, n_trials: int | None = None) -> WorkerPlan:
        return plan_for(self.conf, n_trials, self.largest_mb)

    def supervisor(self, study: optuna.Study, runbook: RunBook | None, specs: list[WorkerSpec],
                   n_trials: int) -> Supervisor:
        return Supervisor(study, runbook, specs, n_trials=n_trials, max_retry=int(self.conf.max_retry),
                          max_failure_rate=float(self.conf.max_failure_rate),
                          budget=TrialBudget(study, self.url, n_trials, retry_s=self.store_retry_s))

    def watch(self, supervisor: Supervisor, study: optuna.Study, n_trials: int, label: str) -> Outcome:
        with SweepProgress(study, n_trials, label) as progress:
            return supervisor.run(on_progress=progress.refresh)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _heartbeat(self) -> int | None:
        return int(self.conf.heartbeat_interval) if "://" in self.url and not self.url.startswith("journal") else None

    def _describe(self, study: optuna.Study) -> None:
        """Study attributes the analysis, export and reproduce tools read back (optuna-dashboard
        shows them too, so secrets are masked: by key name, override lines included, and by shape)."""
        attrs = {
            "objective_metric": self.objectives[0], "objectives": self.objectives, "directions": self.directions,
            "search_space": self.space.grammar, "fixed_params": dict(self.space.fixed),
            "seed_tuned": any(k in self.space.distributions for k in ("seed", "data_seed")),
            "custom_search_space": self.space.custom.path if self.space.custom is not None else None,
            "sampler": str(self.conf.sampler), "sampler_kwargs": kwargs_of(self.conf.sampler_kwargs),
            "mlflow_tracking_uri": mask_url(self.tracking_uri), "mlflow_experiment_name": str(self.job.mlflow.experiment_name),
            "compose": {"config_dir": self.compose.config_dir, "config_name": self.compose.config_name,
                        "overrides": [redact_override(o) for o in self.compose.overrides]},
            "trial_root": self.trial_root,
            "base_config": json.loads(json_text(OmegaConf.to_container(self.job, resolve=True))),
        }
        for key, value in redact(attrs).items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)

    def _parent_params(self) -> dict[str, Any]:
        custom = {"custom_search_space": self.space.custom.path} if self.space.custom is not None else {}
        return {f"search_space.{k}": v for k, v in self.space.grammar.items()} | custom | {
            "study_name": self.study_name, "objectives": ",".join(self.objectives),
            "directions": ",".join(self.directions)}

    def _parent_tags(self) -> dict[str, str]:
        conf = self.conf
        return {"sweep.role": "parent", "optuna.study_name": self.study_name, "optuna.storage": mask_url(self.url),
                "sweep.n_trials": str(conf.n_trials), "sweep.sampler": str(conf.sampler),
                "sweep.pruner": str(conf.pruner), "sweep.n_jobs": str(conf.n_jobs),
                "sweep.workers_per_device": str(conf.get("workers_per_device", 1)),
                "sweep.worker_plan": "; ".join(self.plan(int(conf.n_trials)).lines) or "-",
                "sweep.largest_trial_estimate_mb": f"{self.largest_mb:.0f}" if self.largest_mb else "-"}

    def _finish(self, study: optuna.Study, runbook: RunBook, status: str) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        counts["skipped"] = sum(MEMORY_SKIP_ATTR in t.user_attrs for t in trials)  # stored PRUNED, never trained
        counts["pruned"] -= counts["skipped"]
        metrics = {f"trials_{k}": float(v) for k, v in counts.items()}
        tags: dict[str, str] = {}
        best: dict[str, Any] = {}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(self.directions) == 1:
            trial = study.best_trial
            metrics["best_value"] = float(trial.value)
            tags = {f"best.{k}": str(v) for k, v in trial.params.items()}
            tags.update({"best.trial_number": str(trial.number), "best.mlflow_run_id": str(trial.user_attrs.get("mlflow_run_id", ""))})
            best = {"number": trial.number, "value": trial.value, "params": trial.params,
                    "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"), "metrics": trial.user_attrs.get("metrics")}
            found = gain_over_base(study)
            if found is not None:
                metrics.update(base_value=float(found[0].value), gain_over_base=float(found[1]))
                tags["base.trial_number"] = str(found[0].number)
                best["base"] = {"number": found[0].number, "value": found[0].value, "gain": found[1]}
            race = study.user_attrs.get("race")
            tags["winner.trial_number"] = str(race["winner"] if race else trial.number)
            if race:
                best["race"] = race
        elif complete:
            best = {"pareto_front": [{"number": t.number, "values": t.values, "params": t.params} for t in study.best_trials]}
        try:
            runbook.finish_parent(status, metrics, tags, {"best_trial.json": json_text(best)})
        except Exception as exc:  # the summary below matters more than the parent's last tags
            console.print(f"[yellow]could not finalise the MLflow parent run: {exc}")
        console.print(top_trials_table(study, title=f"Top trials of {self.study_name}"))
        note = base_text(study)
        if note:
            console.print(note)
        race = study.user_attrs.get("race")
        if race:
            console.print(f"[bold]winner[/] (seed race): #{race['winner']}, mean {interval_text(race)} over fresh seed pairs"
                          + (" (optimistic: picked among several survivors on these runs)" if race.get("mean_optimistic")
                             else "") + "; "
                          f"the single best trial #{race['best_single_trial']} scored {race['best_single_value']:.4f} "
                          "on its one seed. Export and chat default to the race winner.")
        skipped = f", {counts['skipped']} skipped over max_memory_gb" if counts["skipped"] else ""
        tracking = mask_url(self.tracking_uri)
        where = "" if self.url == storage_url(None) else f" --storage {mask_url(self.url)}"
        ui = "" if tracking.startswith(("http://", "https://")) else f" (serve both: lora-sweep ui --study {self.study_name}{where})"
        console.print(f"trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed{skipped}")
        console.print(f"MLflow runs: {runs_page_url(tracking, runbook.experiment_id)}{ui} · "
                      f"Optuna: optuna-dashboard {mask_url(self.url).replace('journal:///', '/')}", soft_wrap=True)
        console.print(f"report: lora-sweep report --study {self.study_name}{where}", soft_wrap=True)
