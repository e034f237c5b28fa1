#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying bnexp's cluster path
# (hydra/launcher=submitit_slurm) and for its tests (tests/test_slurm.py).
#
#   scripts/slurm_local.sh start     # install (Debian/Ubuntu, as root) if needed, then start
#   export SLURM_CONF=/tmp/bnexp-slurm/slurm.conf   # what `start` and `env` print
#   scripts/slurm_local.sh status    # daemons and the node, as sinfo sees it
#   scripts/slurm_local.sh stop      # stop the daemons (by their PIDs); the state folder stays
#   scripts/slurm_local.sh env       # print the export line
#
# Everything lives under one state folder, $BNEXP_SLURM_DIR (default /tmp/bnexp-slurm): the
# munge key and socket, slurm.conf, the daemons' PID files, logs and spool. Nothing is written
# to /etc and no system service is started. Idempotent: `start` on a running cluster only
# checks it; `stop` on a stopped one does nothing. The cluster: munged, slurmctld and one
# slurmd for node "localnode" (NodeAddr=127.0.0.1, CPUs from nproc, RealMemory 80% of the
# machine's), partition "debug", no accounting (sacct is unavailable; bnexp asks scontrol),
# no cgroups (proctrack/linuxproc, task/none). Ports: $BNEXP_SLURM_PORT (default 6817) for
# slurmctld and the next one for slurmd.
set -euo pipefail

STATE=${BNEXP_SLURM_DIR:-/tmp/bnexp-slurm}
PORT=${BNEXP_SLURM_PORT:-6817}
CONF=$STATE/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "slurm_local: $*" >&2; }

have_binaries() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null
}

install() {
  have_binaries && return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    log "SLURM is not installed and cannot be installed here (needs root and apt-get):"
    log "  apt-get install ${PACKAGES[*]}"
    return 3
  fi
  log "installing ${PACKAGES[*]} (apt-get, quietly)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1 || {
    apt-get update -qq >>"$STATE/apt.log" 2>&1 \
      && apt-get install -y -qq "${PACKAGES[@]}" >>"$STATE/apt.log" 2>&1
  } || { log "apt-get failed, see $STATE/apt.log"; return 3; }
}

alive() {  # alive NAME: the daemon whose PID file is $STATE/NAME.pid runs
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

write_conf() {
  local cpus mem_mb user host
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  user=$(id -un)
  host=$(hostname -s)
  cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a single-node cluster under $STATE
ClusterName=bnexp-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
PlugStackConfig=$STATE/plugstack.conf
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
EnforcePartLimits=ALL
MaxArraySize=10001
NodeName=localnode NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localnode Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$STATE/plugstack.conf"
}

start_munge() {
  alive munged && return 0
  mkdir -p "$STATE/munge"
  chmod 700 "$STATE/munge"
  if [[ ! -s $STATE/munge/munge.key ]]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
  fi
  munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed"
}

wait_for() {  # wait_for SECONDS COMMAND...: until the command succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

node_ready() {
  local state
  state=$(SLURM_CONF=$CONF sinfo -h -n localnode -o %T 2>/dev/null) || return 1
  [[ $state == idle* || $state == mixed* || $state == allocated* ]]
}

start() {
  mkdir -p "$STATE"/{log,ctld,spool}
  install
  if alive slurmctld && alive slurmd && alive munged && node_ready; then
    log "already running ($STATE)"
  else
    [[ -f $CONF ]] && alive slurmctld || write_conf
    start_munge
    if ! alive slurmctld; then slurmctld -f "$CONF" -i; fi
    wait_for 20 env SLURM_CONF="$CONF" scontrol ping \
      || { log "slurmctld did not start; see $STATE/log/slurmctld.log"; exit 1; }
    if ! alive slurmd; then slurmd -f "$CONF" -N localnode; fi
    if ! wait_for 30 node_ready; then
      SLURM_CONF=$CONF scontrol update nodename=localnode state=resume >/dev/null 2>&1 || true
      wait_for 10 node_ready \
        || { log "the node did not come up; see $STATE/log/slurmd.log"; exit 1; }
    fi
    log "started: partition debug, node localnode ($(nproc) CPUs), state in $STATE"
  fi
  echo "export SLURM_CONF=$CONF"
}

stop_one() {
  local name=$1 pid
  pid=$(cat "$STATE/$name.pid" 2>/dev/null) || return 0
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $name ($pid)"
  fi
  rm -f "$STATE/$name.pid"
}

stop() {
  if alive slurmctld; then  # jobs still running would outlive slurmd otherwise
    SLURM_CONF=$CONF scancel --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  stop_one slurmd
  stop_one slurmctld
  stop_one munged
}

status() {
  local rc=0 name
  for name in munged slurmctld slurmd; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"
    else echo "$name: stopped"; rc=1; fi
  done
  if ((rc == 0)); then SLURM_CONF=$CONF sinfo; fi
  echo "state: $STATE"
  return $rc
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
