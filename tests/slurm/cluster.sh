#!/usr/bin/env bash
# Single-node SLURM cluster for the executor tests (Debian/Ubuntu, no systemd).
#
#   tests/slurm/cluster.sh start|stop|status
#
# start  installs the packages if missing, writes /etc/slurm/*.conf for this host
#        and starts munged, [mariadbd, slurmdbd,] slurmctld, slurmd. Idempotent.
# stop   kills the daemons by their pid files. Harmless when nothing runs.
# status prints what runs; exit 0 if the cluster is up, 1 otherwise.
#
# BABELFLOW_SLURM_DBD=0 selects the variant without accounting (no mariadb/slurmdbd).
# Then `sacct` fails, and snakemake-executor-plugin-slurm needs `--slurm-status-command squeue`.
#
# Exit code 77 means "this machine cannot run the cluster" (not root, no packages,
# a daemon refuses to start); the tests skip on it. The reason goes to stderr.
set -euo pipefail

CLUSTER=babelflow
DBD=${BABELFLOW_SLURM_DBD:-1}
LOG=/var/log/slurm
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
STATE=/var/spool/slurmctld
MARKER="# written by babelflow tests/slurm/cluster.sh"
WAIT=60   # seconds to wait for the cluster to become usable
# Debian's default pid-file paths, so daemons started some other way are recognised too.
declare -A PIDFILE=(
  [munged]=/run/munge/munged.pid [mariadbd]=/run/mysqld/mysqld.pid
  [slurmdbd]=/run/slurmdbd.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid
)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

skip() { echo "cluster.sh: machine cannot run daemons: $*" >&2; exit 77; }
say() { echo "cluster.sh: $*" >&2; }

# Daemons and /etc need root; re-run through passwordless sudo if we are not root.
if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=BABELFLOW_SLURM_DBD "$0" "$@"
  fi
  skip "not root (uid $EUID) and no passwordless sudo"
fi

# PID of a running daemon, or nothing. Checks /proc/PID/comm so a stale pid file
# whose PID got reused does not count.
pid_of() {
  local f=${PIDFILE[$1]} pid comm
  [[ -s $f ]] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$1"* ]] || return 1
  echo "$pid"
}
running() { pid_of "$1" >/dev/null; }

daemons() {  # those this variant needs, in start order
  if [[ $DBD == 0 ]]; then echo munged slurmctld slurmd
  else echo munged mariadbd slurmdbd slurmctld slurmd; fi
}

# Stop daemons: SIGTERM to all at once (each takes 1-2 s to exit), wait up to 30 s,
# then SIGKILL what is left; remove the pid files.
stop_daemons() {
  local d pid pids=() i alive
  for d in "$@"; do
    if pid=$(pid_of "$d"); then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
  done
  for ((i = 0; i < 300; i++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for d in "$@"; do rm -f "${PIDFILE[$d]}"; done
}

# await_daemon NAME RC [BGPID]: wait (bounded, 15 s) for a live pid in NAME's pid file,
# else exit 77 with the end of its log. RC: the launcher's exit status; BGPID: the pid of
# a daemon we put in the background ourselves (stop waiting as soon as it died).
await_daemon() {
  local name=$1 rc=$2 bgpid=${3:-} i why="no live pid in ${PIDFILE[$1]} after 15 s"
  if ((rc)); then
    why="it exited with status $rc"
  else
    for ((i = 0; i < 150; i++)); do
      running "$name" && return 0
      if [[ -n $bgpid ]] && ! kill -0 "$bgpid" 2>/dev/null; then why="it exited"; break; fi
      sleep 0.1
    done
  fi
  skip "$name did not start: $why; last lines of $LOG/$name.log:
$(tail -n 15 "$LOG/$name.log" 2>/dev/null)"
}

# Start a self-daemonizing daemon: launch NAME CMD...; stdio away from our caller's pipes.
launch() {
  local name=$1 rc=0; shift
  "$@" </dev/null >>"$LOG/$name.log" 2>&1 || rc=$?
  await_daemon "$name" "$rc"
}

# Run until CMD succeeds, at most $1 seconds.
retry() {
  local t=$1 i; shift
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

install_packages() {
  local pkgs=(slurmctld slurmd slurm-client munge) missing=() p
  [[ $DBD == 0 ]] || pkgs+=(mariadb-server slurmdbd)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || skip "packages missing (${missing[*]}) and no apt-get"
  say "installing ${missing[*]}"
  # Without systemd, postinst would start munge/mariadb through init scripts behind
  # our back (other pid handling, port clash); a policy-rc.d answering 101 forbids that.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -q)
  local ok=0
  # Fetch package lists only when they are absent or the install fails (stale lists).
  if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && "${apt[@]}" "${missing[@]}" >"$LOG/apt.log" 2>&1; then
    ok=1
  elif apt-get update -q >>"$LOG/apt.log" 2>&1 && "${apt[@]}" "${missing[@]}" >>"$LOG/apt.log" 2>&1; then
    ok=1
  fi
  ((made_policy)) && rm -f "$policy"
  ((ok)) || skip "apt-get install ${missing[*]} failed; see $LOG/apt.log:
$(tail -n 5 "$LOG/apt.log")"
}

# Refuse to overwrite a config that this script did not write (a real cluster's).
check_ours() {
  [[ ! -e $1 ]] || grep -qF "$MARKER" "$1" ||
    skip "$1 exists and was not written by this script; refusing to overwrite it"
}

slurm_conf() {
  local host cpus mem_total mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem_total=$(free -m | awk '/^Mem:/ {print $2}')
  # Leave a margin: slurmd drains a node whose real memory is below RealMemory.
  mem=$((mem_total * 9 / 10))
  cat <<EOF
$MARKER
ClusterName=$CLUSTER
# NodeAddr/SlurmctldHost at 127.0.0.1: works even if the host name does not resolve.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups: containers rarely allow them, and one test node needs no isolation.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Keep finished jobs visible to squeue/scontrol for 10 min (squeue status fallback).
MinJobAge=600
# Plain-text record of every finished job, as evidence independent of accounting.
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
EOF
  if [[ $DBD == 0 ]]; then
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobAcctGatherType=jobacct_gather/none"
  else
    # sacct (the plugin's default status command) needs slurmdbd.
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=localhost"
    echo "JobAcctGatherType=jobacct_gather/linux"
  fi
  cat <<EOF
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

DBPASS=babelflow-slurm
slurmdbd_conf() {
  cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=${PIDFILE[slurmdbd]}
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
}

# Write $2 to $1 if it differs; return 0 when the file changed.
write_if_changed() {
  if [[ -f $1 ]] && [[ $(cat "$1") == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1.tmp" && mv "$1.tmp" "$1"
}

start_munged() {
  running munged && return 0
  if [[ ! -s /etc/munge/munge.key ]]; then  # Debian's postinst normally creates it
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  touch "$LOG/munged.log" && chown munge:munge "$LOG/munged.log"
  # --force: a socket left behind by a killed munged would otherwise block the start.
  launch munged runuser -u munge -- /usr/sbin/munged --force --log-file="$LOG/munged.log"
  retry 10 munge -n || skip "munged runs but 'munge -n' fails; see $LOG/munged.log"
}

start_mariadbd() {
  running mariadbd && return 0
  if [[ ! -d /var/lib/mysql/mysql ]]; then  # normally created by the package's postinst
    mariadb-install-db --user=mysql >>"$LOG/mariadbd.log" 2>&1 ||
      skip "mariadb-install-db failed; see $LOG/mariadbd.log"
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  touch "$LOG/mariadbd.log" && chown mysql:mysql "$LOG/mariadbd.log"
  # mariadbd does not daemonize: setsid + nohup, and no inherited stdout, so that a
  # caller capturing our output (pytest's subprocess) does not wait for it.
  setsid nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
    --pid-file="${PIDFILE[mariadbd]}" --log-error="$LOG/mariadbd.log" \
    </dev/null >>"$LOG/mariadbd.log" 2>&1 &
  await_daemon mariadbd 0 $!  # setsid execs (no fork) in a script: $! is mariadbd
  retry 30 mariadb -e 'SELECT 1' || skip "mariadbd does not answer; see $LOG/mariadbd.log"
}

start_slurmdbd() {
  # Root connects through the unix socket (Debian's unix_socket auth); IF NOT EXISTS: idempotent.
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
    skip "cannot create the slurm database in mariadb"
  if ! running slurmdbd; then
    launch slurmdbd /usr/sbin/slurmdbd
  fi
  # slurmdbd creates its tables on first start; wait until it answers.
  retry 30 sacctmgr -n list cluster || skip "slurmdbd does not answer sacctmgr; see $LOG/slurmdbd.log"
  # Register the cluster before slurmctld starts, else sacct finds no jobs.
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurmctld() {
  running slurmctld && return 0
  # slurmctld refuses a StateSaveLocation that belongs to another ClusterName.
  if [[ -f $STATE/clustername ]] && [[ $(cat "$STATE/clustername") != "$CLUSTER" ]]; then
    say "clearing $STATE (it belongs to cluster $(cat "$STATE/clustername"))"
    rm -rf "${STATE:?}"/*
  fi
  launch slurmctld /usr/sbin/slurmctld
}

start_slurmd() {
  running slurmd && return 0
  launch slurmd /usr/sbin/slurmd
}

summary() {
  local acct=none
  [[ $DBD == 0 ]] || acct=slurmdbd
  echo "slurm up: cluster=$CLUSTER node=$(hostname -s) cpus=$(nproc)" \
    "partition=main state=$(sinfo -h -o %t | head -1) accounting=$acct" \
    "(sacct $([[ $DBD == 0 ]] && echo unavailable || echo works)) logs=$LOG"
}

cmd_start() {
  mkdir -p "$LOG" /etc/slurm "$STATE" /var/spool/slurmd
  install_packages
  check_ours "$CONF"
  [[ $DBD == 0 ]] || check_ours "$DBDCONF"
  local changed=0
  write_if_changed "$CONF" "$(slurm_conf)" && changed=1
  if [[ $DBD != 0 ]]; then
    write_if_changed "$DBDCONF" "$(slurmdbd_conf)" && changed=1
    chmod 600 "$DBDCONF"  # slurmdbd refuses a config others can read
  fi
  # A new config (other variant, other memory) needs the slurm daemons restarted.
  if ((changed)); then
    say "config changed, (re)starting the slurm daemons"
    stop_daemons slurmd slurmctld slurmdbd
  fi

  start_munged
  if [[ $DBD != 0 ]]; then start_mariadbd; start_slurmdbd; fi
  start_slurmctld
  start_slurmd

  # Usable = the node is idle (or already running jobs) and, with accounting, sacct answers.
  local i state
  for ((i = 0; i < WAIT * 2; i++)); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    if [[ $state =~ ^(idle|mix|alloc) ]] &&
      { [[ $DBD == 0 ]] || sacct -n -X >/dev/null 2>&1; }; then
      summary
      return 0
    fi
    # A node drained/down by an earlier run (e.g. a memory mismatch) is put back once.
    if ((i == 10)) && [[ $state =~ ^(drain|down|drng) ]]; then
      scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    fi
    sleep 0.5
  done
  skip "daemons run but the node is not idle after ${WAIT}s (sinfo state '${state:-none}': $(sinfo -h -N -o '%E' 2>/dev/null | head -1)); see $LOG/slurmctld.log and $LOG/slurmd.log"
}

cmd_stop() {
  stop_daemons slurmd slurmctld slurmdbd mariadbd munged
  # Our config would point every SLURM client at a controller that is gone: the snakemake
  # SLURM plugin runs `scontrol show config` when snakemake starts and waits 10 s for it.
  # `start` writes the config anew; a config we did not write is never touched.
  if [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF" "$DBDCONF"; fi
  echo "slurm stopped"
}

cmd_status() {
  local d down=0 pid
  # The variant in effect is the one the current config was written for.
  if [[ -f $CONF ]] && ! grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF"; then
    DBD=0
  fi
  for d in $(daemons); do
    if pid=$(pid_of "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; down=1; fi
  done
  if ((down == 0)) && sinfo 2>/dev/null; then return 0; fi
  return 1
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
