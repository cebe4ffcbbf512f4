"""Run one sweep on a SLURM cluster: write an sbatch script that starts the same sweep command on
every task and submit it.

    python -m sweeps.slurm --nodes 4 --gpus-per-node 8 -- hydra.sweeper.n_trials=64 \\
        hydra.sweeper.storage=postgresql://user:pass@dbhost/optuna mlflow.tracking_uri=http://dbhost:5000

Each task is an ordinary sweep process on its node (one task per node by default): it plans
workers over the GPUs SLURM gave its node (`CUDA_VISIBLE_DEVICES`), and all tasks share one study
and one MLflow experiment, so `hydra.sweeper.n_trials` is the total across the whole job. The
study name is derived from the command, so every task, and a resubmission, joins the same study:
rerunning this command resumes the sweep. SLURM sends SIGTERM `--signal-seconds` before the time
limit and on preemption; the sweep stops its workers, keeps what finished, and the next
submission runs only what is missing.

The study needs storage every task reaches: PostgreSQL across nodes, or the journal file on a
shared file system (Optuna's journal uses a lock file there, which needs a file system with
working POSIX locks and atomic renames; NFS is known to be unreliable for it). MLflow likewise:
a tracking server across nodes, a local SQLite file only on one node. An override that carries a
secret reaches the job through an environment variable, never through the script file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.tracking.redact import redact_override

REPO = Path(__file__).resolve().parents[1]


@dataclass
class SlurmJob:
    """What the sbatch script asks SLURM for, and the sweep command each task runs."""

    overrides: list[str]
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    job_name: str = "lora-sweep"
    signal_seconds: int = 120
    log_dir: str = "slurm"
    workdir: str = field(default_factory=os.getcwd)
    python: str = sys.executable
    extra_sbatch: list[str] = field(default_factory=list)

    def secret_overrides(self) -> dict[str, str]:
        """Overrides that carry a secret (a URL password, a token-named key), by the environment
        variable that takes them to the job: the script on disk holds only the variable's name."""
        return {f"LORA_SWEEP_SECRET_{i}": o for i, o in enumerate(self.overrides) if redact_override(o) != o}

    def sweep_command(self) -> str:
        names = {o: name for name, o in self.secret_overrides().items()}
        words = [shlex.quote(self.python), shlex.quote(str(REPO / "sweep.py")), "-m"]
        words += [f'"${names[o]}"' if o in names else shlex.quote(o) for o in self.overrides]
        return " ".join(words)

    def script(self) -> str:
        """The sbatch script: directives first, then one `srun` that starts a sweep per task."""
        log_dir = Path(self.workdir, self.log_dir)
        directives = [
            f"--job-name={self.job_name}",
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            f"--output={log_dir / '%x-%j.out'}",
            "--open-mode=append",          # a requeued job appends to the same log
            "--requeue",                   # preemption puts the job back in the queue
            f"--signal=TERM@{self.signal_seconds}",  # SIGTERM to every task before the time limit
        ]
        if self.gpus_per_node:
            directives.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.cpus_per_task:
            directives.append(f"--cpus-per-task={self.cpus_per_task}")
        for flag, value in (("partition", self.partition), ("time", self.time), ("account", self.account)):
            if value:
                directives.append(f"--{flag}={value}")
        directives += self.extra_sbatch
        command = self.sweep_command()
        lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "",
                 "# Every task runs the same sweep command: one sweep process per task, all on one study.",
                 "# n_trials is the total across tasks; rerunning this script resumes the sweep.",
                 "set -uo pipefail",
                 f"cd {shlex.quote(self.workdir)}",
                 'echo "job $SLURM_JOB_ID on $(hostname) at $(date -Is): $SLURM_NTASKS task(s)"',
                 # --kill-on-bad-exit=0: one task failing does not kill the others' trials mid-flight.
                 f"srun --kill-on-bad-exit=0 --cpu-bind=none {command}"]
        return "\n".join(lines) + "\n"


def storage_warnings(job: SlurmJob) -> list[str]:
    """What will not work across nodes, said before the job is queued."""
    if job.nodes < 2:
        return []
    given = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in job.overrides if "=" in o}
    warnings = []
    storage = given.get("hydra.sweeper.storage")
    if not storage or not storage.startswith(("postgresql", "mysql")):
        warnings.append("hydra.sweeper.storage is a journal file: every node must see the same file on a shared "
                        "file system with working POSIX locks (not NFS); PostgreSQL is the safe choice across nodes")
    tracking = given.get("mlflow.tracking_uri", "sqlite:///mlflow.db")
    if tracking.startswith("sqlite") or "://" not in tracking:
        warnings.append("mlflow.tracking_uri is a local file: run `mlflow server` and pass its http:// URL, "
                        "else each node writes its own store")
    return warnings


def submit(job: SlurmJob, wait: bool = False) -> str:
    """Write the script under `log_dir` and sbatch it; returns the job id."""
    log_dir = Path(job.workdir, job.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{job.job_name}.sbatch"
    path.write_text(job.script())
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)]
    # sbatch hands the submitting environment to the job (--export=ALL): secrets travel there.
    proc = subprocess.run(cmd, cwd=job.workdir, capture_output=True, text=True,
                          env={**os.environ, **job.secret_overrides()})
    if proc.returncode != 0 and not (wait and proc.stdout.strip()):
        raise SystemExit(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().splitlines()[0].split(";")[0] if proc.stdout.strip() else ""
    if wait and proc.returncode != 0:
        raise SystemExit(f"SLURM job {job_id} ended with exit code {proc.returncode}; see {log_dir}")
    return job_id


def parse(argv: list[str] | None = None) -> tuple[SlurmJob, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.slurm",
        description="Submit a sweep to SLURM: every task runs the same `sweep.py -m` command on one shared study.",
        epilog="Everything after `--` is passed to `python sweep.py -m` unchanged, on every task.")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--tasks-per-node", type=int, default=1,
                        help="sweep processes per node (default 1; each plans workers over its node's devices)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0: CPU)")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default=None, help="time limit, e.g. 04:00:00")
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default="lora-sweep")
    parser.add_argument("--signal-seconds", type=int, default=120,
                        help="SIGTERM this many seconds before the time limit (default 120)")
    parser.add_argument("--log-dir", default="slurm", help="where the script and the job logs go (default ./slurm)")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="one more sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    parser.add_argument("--wait", action="store_true", help="block until the job ends (sbatch --wait)")
    parser.add_argument("overrides", nargs="*", help="sweep overrides (after --)")
    args = parser.parse_args(argv)
    for name in ("nodes", "tasks_per_node"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("gpus_per_node", "signal_seconds"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        parser.error(f"--cpus-per-task must be at least 1, got {args.cpus_per_task}")
    if "-m" in args.overrides or "--multirun" in args.overrides:
        parser.error("pass only overrides after --; the script adds `sweep.py -m` itself")
    job = SlurmJob(overrides=list(args.overrides), nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                   gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, partition=args.partition,
                   time=args.time, account=args.account, job_name=args.job_name, signal_seconds=args.signal_seconds,
                   log_dir=args.log_dir, extra_sbatch=list(args.sbatch_arg))
    return job, args


def main(argv: list[str] | None = None) -> None:
    job, args = parse(argv)
    for warning in storage_warnings(job):
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(job.script(), end="")
        return
    job_id = submit(job, wait=args.wait)
    tasks = job.nodes * job.tasks_per_node
    print(f"submitted SLURM job {job_id}: {tasks} sweep process(es) on {job.nodes} node(s), one study; "
          f"logs in {Path(job.workdir, job.log_dir)}. Rerun this command to resume.")


if __name__ == "__main__":
    main()
