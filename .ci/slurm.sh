#!/usr/bin/env bash
# Install (a no-op when present) and start a one-node SLURM cluster on loopback for
# tests/test_slurm.py; prints the folder holding slurm.conf (the tests read it from
# LORA_SWEEP_SLURM_CONF). Runs as root in a container without systemd or cgroups.
set -euo pipefail
exec 3>&1 1>&2  # only the conf path goes to stdout; everything else to stderr

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null; apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null; }
fi

state=/tmp/lora-sweep-slurm
mkdir -p "$state/spool" "$state/state" "$state/log"

# munge: its folders must exist and belong to the munge user, and it runs as that user
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged 3>&- </dev/null  # daemons must not hold the caller's pipe open
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm
cat > "$conf" <<EOF
ClusterName=lorasweep
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running "$state/slurmctld.pid" || slurmctld 3>&- </dev/null
for _ in $(seq 30); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
running "$state/slurmd.pid" || slurmd 3>&- </dev/null
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)' && break
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
sinfo -h -o %T | grep -q -E '^(idle|mixed|allocated)' || { sinfo; tail -20 "$state/log/slurmctld.log"; exit 1; }
echo "/etc/slurm" >&3
