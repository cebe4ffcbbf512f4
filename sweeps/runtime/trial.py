"""One trial in a worker, read top to bottom in `run_one`:

params → compose the trial config → `RunOpened` → `trainer.run_trial` (its reporter sends
metrics and asks the pruner) → `study.tell` → `RunClosed` (final metrics, curve PNG, adapter).

Every other way a trial can end (pruned, preempted, taken away, out of memory, failed, the
sweep gone) has its own method on `TrialRun`, which holds what they share: the trial, its
MLflow key, whether its run was opened, its run link and its heartbeat. The worker process
around it (signals, the trial loop) is `sweeps/runtime/worker.py`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.runtime.events import RunClosed, RunOpened, TagsSet, TrialEnd, TrialFinished, TrialStarted
from sweeps.runtime.reporting import Heartbeat, RunLink, TrialReporter, wait_for_link
from sweeps.runtime.stop import STOP, Interrupted, SweepGone, TrialTakenAway
from sweeps.search.storage import MEMORY_SKIP_ATTR, RACE_SUFFIX
from trainer import trace

if TYPE_CHECKING:
    from sweeps.runtime.worker import Worker

SAMPLES_TABLE = "sample_generations.json"  # SFT trials: prompt, reference, answer per logged eval row


class NonFiniteObjectiveError(ValueError):
    """A trial trained but its objective is NaN/inf: Optuna would store it as FAIL, so the MLflow
    run must end FAILED too, with the reason."""


def run_one(worker: "Worker", trial) -> None:
    """Run `trial` to its end in this worker; whatever happens, it is told and its run closed."""
    import optuna
    import torch

    from sweeps.runtime.compose import compose_job
    from sweeps.tracking.curves import plot_curves

    run = TrialRun(worker, trial)
    try:
        checkpoint_dir, resume = run.checkpoint()
        params = run.params()
        cfg = compose_job(run.spec.compose, params)
        if run.over_memory(cfg):
            return
        run.open(cfg, resume)
        result = run.train(cfg, checkpoint_dir, resume)
        values = run.objective_values(result)
        sha = adapter_sha256(result.adapter_dir)
        attrs = run.record(result, cfg, sha)
        curves = plot_curves(result.history, run.folder / "curves.png", f"{run.spec.study_name} #{trial.number}")
        run.tell(values)
        run.close_complete(result, values, sha, attrs["deterministic"], curves)
    except optuna.TrialPruned as exc:
        run.pruned(exc)
    except worker.trainer.TrialPreempted as exc:
        run.preempted(exc)
    except TrialTakenAway:
        run.taken_away()
    except SweepGone as exc:
        run.sweep_gone(exc)
        raise
    except Interrupted as exc:
        run.fail(str(exc), "KILLED")
        raise
    except torch.OutOfMemoryError as exc:
        run.out_of_memory(exc)
    except worker.trainer.NonFiniteLossError as exc:
        run.fail(f"non-finite loss: {exc}", "FAILED")
    except NonFiniteObjectiveError as exc:
        run.fail(str(exc), "FAILED")
    except Exception as exc:  # any other failure ends this trial only; the sweep goes on
        run.failed(exc)
    finally:
        run.end()


class TrialRun:
    """One trial's state in a worker and the ways it ends."""

    def __init__(self, worker: "Worker", trial) -> None:
        from sweeps.search.study import trial_folder, trial_id

        self.worker, self.trial = worker, trial
        self.spec, self.study, self.events = worker.spec, worker.study, worker.events
        spec, number = worker.spec, trial.number
        self.key = f"{spec.study_name}:{number}"
        self.kind = "race" if spec.study_name.endswith(RACE_SUFFIX) else "reproduce" if spec.replay_only else "trial"
        self.folder = trial_folder(spec.trial_root, self.kind, number)
        self.send(TrialStarted(self.key, trial_id(trial), number, dict(trial.params), dict(trial.user_attrs)))
        self.heartbeat = Heartbeat(worker.storage, trial_id(trial), spec.heartbeat_interval)
        self.reporter: TrialReporter | None = None
        self.link: RunLink | None = None
        self.opened = self.told = False
        STOP.in_trial = True

    # -- the way through ---------------------------------------------------------------------------
    def checkpoint(self) -> tuple[Path, bool]:
        """Where this trial checkpoints, and whether it continues a checkpoint: a preempted
        trial's continuation (`resumes_trial`) or the retry of one whose worker or sweep died
        (`retry_of`) resumes from the folder it inherited when a checkpoint is there; the
        intermediate values up to that step are copied from the attempt before, so the pruner
        sees the whole curve. A new trial starts from a clean folder."""
        from trainer.training.checkpoint import checkpoint_step, has_checkpoint

        trial, attrs = self.trial, self.trial.user_attrs
        folder = Path(attrs.get("checkpoint_dir") or self.folder / "checkpoint")
        before = attrs.get("resumes_trial", attrs.get("requeued_from"))
        if before is None or not has_checkpoint(folder):
            shutil.rmtree(folder, ignore_errors=True)
            trial.set_user_attr("checkpoint_dir", str(folder))
            return folder, False
        step = checkpoint_step(folder)
        earlier = next(t for t in self.study.get_trials(deepcopy=False) if t.number == int(before))
        for at, value in sorted(earlier.intermediate_values.items()):
            if at <= step:
                trial.report(value, at)
        trial.set_user_attr("resumed_from_step", step)
        return folder, True

    @trace.traced("worker.sample_params")
    def params(self) -> dict[str, Any]:
        """The sampler's choice for every searched key, then what hydra.sweeper.custom_search_space
        suggests on top, then the trial's fixed overrides (reproduce: a fixed config with new
        seeds), over the space's fixed values."""
        from sweeps.search.space import suggest

        space = self.spec.space
        params = {key: suggest(self.trial, key, dist) for key, dist in space.distributions.items()}
        if space.custom is not None and not self.spec.replay_only:
            params.update(space.custom.apply(self.trial, dict(space.fixed)))
        params.update(self.trial.user_attrs.get("overrides", {}))
        return {**space.fixed, **params}

    def over_memory(self, cfg) -> bool:
        """hydra.sweeper.max_memory_gb: a config the pre-flight estimates over the limit is not
        trained. It ends PRUNED with its excess as an Optuna constraint (samplers that read
        constraints steer away from it) and `skipped_over_memory` saying why; the budget is not
        charged for it. Every trial carries its estimate, so the choice can be checked."""
        import optuna

        limit = self.spec.max_memory_gb
        if limit is None:
            return False
        device = "cpu" if self.spec.cuda_device is None else "cuda"
        estimate_gb = self.worker.trainer.preflight(cfg).estimate_memory_mb(cfg, device=device) / 1024
        self.trial.set_user_attr("memory_estimate_gb", round(estimate_gb, 3))
        self.trial.set_constraint("max_memory_gb", estimate_gb - limit)
        if estimate_gb <= limit:
            return False
        reason = f"estimated {estimate_gb:.2f} GiB, over hydra.sweeper.max_memory_gb={limit:g}"
        self.trial.set_user_attr(MEMORY_SKIP_ATTR, reason)
        self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        self.finished(TrialEnd.SKIPPED, None, reason)
        return True

    def open(self, cfg, resume: bool) -> None:
        """`RunOpened` to the sweep process (it creates the MLflow child run, or reopens the run of
        the attempt this one continues), then the reporter the trainer talks to."""
        from omegaconf import OmegaConf

        spec, trial = self.spec, self.trial
        tags = {"optuna.study_name": spec.study_name, "optuna.trial_number": str(trial.number),
                "sweep.kind": self.kind, "sweep.worker_id": str(spec.worker_id),
                **{f"env.{k}": str(v) for k, v in self.worker.fingerprint.items()},
                **{f"trial.{k}": str(v) for k, v in trial.user_attrs.items() if k in
                   ("retry_of", "replicates_trial", "seed_kind")}}
        if resume:
            tags["sweep.continues_trial"] = str(trial.user_attrs.get("resumes_trial", trial.user_attrs.get("retry_of")))
        self.send(RunOpened(
            self.key, f"{self.kind}-{trial.number}", OmegaConf.to_container(cfg, resolve=True), tags,
            OmegaConf.to_yaml(cfg), reopen_run_id=trial.user_attrs.get("resume_run_id") if resume else None))
        self.opened = True
        self.link = RunLink(self.worker.replies, self.key, trial) if self.worker.replies is not None else None
        self.reporter = TrialReporter(self.events, self.key, trial, spec.objectives[0],
                                      prune=len(spec.objectives) == 1 and not spec.replay_only, link=self.link,
                                      heartbeat=self.heartbeat, keep_rows=str(spec.pruner).lower() == "wilcoxon")

    def train(self, cfg, checkpoint_dir: Path, resume: bool):
        """`trainer.run_trial`; out of memory with `oom_retry`: once more on a copy of the config
        with half the batch and twice the accumulation (the same effective batch), from scratch."""
        import torch

        trainer, spec = self.worker.trainer, self.spec
        try:
            return trainer.run_trial(cfg, reporter=self.reporter, cache=self.worker.cache, output_dir=self.folder,
                                     checkpoint_dir=checkpoint_dir, resume=resume, **self.selection())
        except torch.OutOfMemoryError:
            if not spec.oom_retry or cfg.train.batch_size < 2:
                raise
            torch.cuda.empty_cache()
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # another batch size: a fresh run
            cfg = copy.deepcopy(cfg)
            cfg.train.batch_size = cfg.train.batch_size // 2
            cfg.train.gradient_accumulation_steps = cfg.train.gradient_accumulation_steps * 2
            self.trial.set_user_attr("oom_retry", {
                "batch_size": int(cfg.train.batch_size),
                "gradient_accumulation_steps": int(cfg.train.gradient_accumulation_steps)})
            self.send(TagsSet(self.key, {"oom_retry": "true"}))
            return trainer.run_trial(cfg, reporter=self.reporter, cache=self.worker.cache, output_dir=self.folder,
                                     checkpoint_dir=checkpoint_dir, **self.selection())

    def selection(self) -> dict[str, Any]:
        """hydra.sweeper.objective_at for a single eval-metric objective (the last eval otherwise);
        seed replicates are also scored on data.test_split."""
        held_out = {"evaluate_test": self.trial.user_attrs.get("replicates_trial") is not None}
        name = self.spec.objectives[0]
        if len(self.spec.objectives) != 1 or not name.startswith("eval_"):
            return held_out
        return {"objective": (name, self.study.directions[0].name.lower()), "objective_at": self.spec.objective_at,
                **held_out}

    def objective_values(self, result) -> list[float]:
        """One value per objective; NaN or inf is refused with the reason (Optuna would store FAIL)."""
        values = [_objective_value(name, result) for name in self.spec.objectives]
        bad = {name: value for name, value in zip(self.spec.objectives, values) if not math.isfinite(value)}
        if bad:
            raise NonFiniteObjectiveError(f"non-finite objective: {', '.join(f'{k}={v}' for k, v in bad.items())}")
        return values

    def record(self, result, cfg, sha: str | None) -> dict[str, Any]:
        """What analysis, export and reproduce read from the trial (user attrs)."""
        attrs = {"metrics": result.metrics, "trainable_params": result.trainable_params,
                 "total_params": result.total_params, "train_runtime_s": result.train_runtime_s,
                 "adapter_sha256": sha, "seed": int(cfg.seed), "data_seed": int(cfg.data_seed),
                 "environment": self.worker.fingerprint, "deterministic": self.worker.trainer.determinism_mode()}
        for name, value in attrs.items():
            self.trial.set_user_attr(name, value)
        return attrs

    def tell(self, values: list[float]) -> None:
        """The result to Optuna, once the run id is linked and the trial is still ours."""
        import optuna

        from sweeps.search.study import trial_id

        wait_for_link(self.link)
        self.heartbeat.check()
        try:
            self.study.tell(self.trial, values)
        except Exception:
            # Optuna stores the state even when a sampler's after_trial hook then raises (the
            # grid sampler calls study.stop() outside optimize once its grid is done): the
            # trial is COMPLETE, and must be closed as such, not failed.
            if self.worker.storage.get_trial(trial_id(self.trial)).state != optuna.trial.TrialState.COMPLETE:
                raise
        self.told = True

    def close_complete(self, result, values: list[float], sha: str | None, deterministic: Any,
                       curves: Path | None) -> None:
        final = {**result.summary_metrics(), "objective": values[0]}
        artifacts = [(str(curves), None)] if curves else []
        if result.adapter_dir:
            artifacts.append((str(result.adapter_dir), "adapter"))
        self.close("FINISHED", final, {"optuna.state": "COMPLETE", "adapter_sha256": sha or "",
                                       "deterministic": deterministic}, artifacts,
                   step=result.steps, tables={SAMPLES_TABLE: result.samples})
        self.finished(TrialEnd.COMPLETE, values[0])

    def end(self) -> None:
        self.heartbeat.stop()
        STOP.in_trial = False

    # -- the other ways a trial ends --------------------------------------------------------------
    def pruned(self, exc) -> None:
        import optuna

        from sweeps.tracking.curves import plot_curves

        if self.heartbeat.taken_away(refresh=True):
            self.taken_away()
            return
        step = self.reporter.last_step
        self.trial.set_user_attr("pruned_at_step", step)
        wait_for_link(self.link)
        self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        curves = plot_curves(self.reporter.history, self.folder / "curves.png",
                             f"{self.spec.study_name} #{self.trial.number} (pruned: {exc})")
        self.close("KILLED", None, {"optuna.state": "PRUNED", "pruned": "true", "pruned_at_step": str(step)},
                   [(str(curves), None)] if curves else [])
        self.finished(TrialEnd.PRUNED, None)

    def preempted(self, exc) -> None:
        """SIGTERM during training: the trial was checkpointed after `exc.step`. It ends FAIL
        marked `preempted_at_step`, its MLflow run KILLED, and a continuation with the same params
        is queued (the next worker or rerun resumes it and reopens the same run)."""
        import optuna

        from sweeps.search.study import enqueue_continuation, trial_id

        reason = f"preempted after step {exc.step} (SIGTERM); a new trial continues it from its checkpoint"
        self.trial.set_user_attr("preempted_at_step", int(exc.step))
        self.trial.set_user_attr("fail_reason", reason)
        # the continuation reopens this run by its id: wait for it a while (a busy sweep process can be
        # seconds late with it), yet well inside a scheduler's grace period before SIGKILL
        wait_for_link(self.link, timeout=15.0)
        with self.worker.budget.locked():
            enqueue_continuation(self.study, self.worker.storage.get_trial(trial_id(self.trial)))
            self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
        if self.opened:
            self.close("KILLED", None, {"optuna.state": "FAIL", "sweep.preempted": "true",
                                        "sweep.preempted_at_step": str(exc.step), "sweep.end_reason": reason}, [])
        self.finished(TrialEnd.PREEMPTED, None, reason)

    def taken_away(self) -> None:
        """The trial was failed by another process (stale heartbeat) and re-queued there: close
        our MLflow run once, FAILED with that reason, and tell Optuna nothing (it is finished)."""
        self.heartbeat.stop()
        reason = "taken away: another process failed this trial as stale and re-queued it; stopped here"
        if self.opened:
            self.close("FAILED", None, {"optuna.state": "FAIL", "error": reason}, [])
        self.finished(TrialEnd.FAIL, None, reason)

    def sweep_gone(self, exc) -> None:
        """The sweep process died: the trial ends FAIL marked `orphaned` (the rerun re-runs it),
        unless another process already took it away."""
        self.heartbeat.stop()
        if not self.heartbeat.taken_away():
            self.trial.set_user_attr("orphaned", True)
            self.fail(str(exc), "KILLED", linked=False)

    def out_of_memory(self, exc) -> None:
        """On a GPU shared with other workers, after the halved-batch retry, the neighbours may be
        to blame: the config is queued again rather than counted as failed (up to
        `OOM_REQUEUE_LIMIT` times), and the sweep process counts the OOM against this device."""
        import optuna

        from sweeps.search.study import requeue_after_oom, trial_id

        reason = f"out of memory: {exc}".splitlines()[0][:500]
        if self.spec.shares_device:
            self.trial.set_user_attr("fail_reason", f"{reason}; queued again (the GPU is shared)")
            wait_for_link(self.link)
            with self.worker.budget.locked():  # the copy takes the freed place in the budget, not a new trial
                requeued = requeue_after_oom(self.study, self.worker.storage.get_trial(trial_id(self.trial)))
                if requeued:
                    self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
            if requeued:
                if self.opened:
                    self.close("FAILED", None, {"optuna.state": "FAIL", "error": reason, "oom": "true",
                                                "sweep.oom_requeued": "true"}, [])
                self.finished(TrialEnd.OOM_REQUEUED, None, reason)
                return
        self.fail(reason, "FAILED", oom=True)

    def failed(self, exc: Exception) -> None:
        """Any other exception: this trial fails with its type, message and traceback."""
        if not self.told and self.heartbeat.taken_away(refresh=True):  # e.g. tell refused: failed elsewhere meanwhile
            self.taken_away()
            return
        self.fail(f"{type(exc).__name__}: {exc}", "FAILED", detail=traceback.format_exc())

    def fail(self, reason: str, run_status: str, oom: bool = False, detail: str = "", linked: bool = True) -> None:
        import optuna

        from sweeps.tracking.redact import scrub_text

        # exception text can carry a token (an HTTP error's URL or header): mask before it is stored
        reason, detail = scrub_text(reason), scrub_text(detail)
        self.trial.set_user_attr("fail_reason", reason[:2000])
        if linked:
            wait_for_link(self.link, timeout=5.0 if run_status == "KILLED" else 60.0)
        self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
        if self.opened:
            self.close(run_status, None, {"optuna.state": "FAIL", "error": reason[:4000], "oom": str(oom).lower(),
                                          "traceback": detail[-4000:]}, [])
        self.finished(TrialEnd.FAIL, None, reason)

    # -- messages to the sweep process -----------------------------------------------------------
    def send(self, message) -> None:
        self.events.put((self.spec.worker_id, message))

    def close(self, status, metrics, tags, artifacts, step: int | None = None, tables=None) -> None:
        self.send(RunClosed(self.key, status, metrics, tags, list(artifacts), step, tables))

    def finished(self, state: TrialEnd, value, reason: str = "") -> None:
        if state is TrialEnd.FAIL:
            self.worker.failed += 1
        self.send(TrialFinished(self.key, self.trial.number, state, value, reason))


def _objective_value(name: str, result) -> float:
    if name in result.metrics:
        return float(result.metrics[name])
    if name in ("trainable_params", "total_params"):
        return float(getattr(result, name))
    raise KeyError(f"hydra.sweeper.objectives: {name!r} is not a metric of this trial; have {sorted(result.metrics)}")


@trace.traced("worker.adapter_sha256")
def adapter_sha256(adapter_dir) -> str | None:
    """One hash over the adapter weights: the determinism check compares it across runs."""
    if not adapter_dir:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
