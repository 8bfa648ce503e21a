#!/usr/bin/env bash
# A real single-node SLURM on localhost for tests and laptops: `start` (idempotent) or `stop`.
# Installs Debian's slurm-wlm and munge if missing, writes a slurm.conf under $REPRO_SLURM_DIR, starts munged,
# slurmctld and slurmd by hand (no systemd). Prints `export SLURM_CONF=...` for the caller to eval.
# Without accounting: sacct does not work here, so the project reads squeue/scontrol and its run store.
set -euo pipefail
BASE=${REPRO_SLURM_DIR:-/tmp/repro-slurm}
CPUS=${REPRO_SLURM_CPUS:-8}   # advertised; config_overrides lets a 2-core machine run several tasks at once
HOST=$(hostname -s)
export SLURM_CONF=$BASE/slurm.conf

alive() {  # pid file -> running (not a zombie: PID 1 here reaps late)
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != "Z" ]
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return
  echo "installing slurm-wlm and munge (Debian packages)..." >&2
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d  # no service starts
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
  }
  rm -f /usr/sbin/policy-rc.d
}

start() {
  install
  mkdir -p "$BASE"/{state,spool,log,run}
  cat > "$BASE/slurm.conf" <<CONF
ClusterName=repro-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  if ! alive /run/munge/munged.pid; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid" || munged --force
  fi
  alive "$BASE/run/slurmctld.pid" || slurmctld -f "$BASE/slurm.conf"
  alive "$BASE/run/slurmd.pid" || slurmd -f "$BASE/slurm.conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
      echo "export SLURM_CONF=$BASE/slurm.conf"
      return 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "SLURM did not come up; see $BASE/log/" >&2
  exit 1
}

stop() {
  if [ -f "$BASE/slurm.conf" ]; then
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true  # job steps outlive slurmd
    sleep 1
  fi
  for name in slurmd slurmctld; do
    if alive "$BASE/run/$name.pid"; then kill "$(cat "$BASE/run/$name.pid")"; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
