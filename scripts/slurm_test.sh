#!/usr/bin/env bash
# The CI configuration's DAG through a real single-node SLURM, started here for this run, compared with a local run.
#
#   bash scripts/slurm_test.sh [WORKDIR]
#
# 1. finds slurm-wlm and munge (installs them with apt-get where it may; SLURM_TEST_NO_INSTALL=1 forbids it);
# 2. writes munge's key, slurm.conf (one node: this host's CPUs and memory, one partition, no accounting database)
#    and the state, spool and log folders under WORKDIR (default: a new temporary folder);
# 3. starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle;
# 4. runs `snakemake --profile workflow/profiles/slurm` on config/ci.yaml (every job submitted with sbatch), then the
#    same configuration locally, and compares every CSV table under the two results folders;
# 5. stops exactly the daemons it started (and cancels jobs left in its queue), whatever happens.
# Exit 0 with "skipped: <reason>" where SLURM cannot be set up on this machine; 1 when the runs fail or differ.
# PYTHON (default: .venv/bin/python, else python3) must have snakemake and snakemake-executor-plugin-slurm.
# SLURM_TEST_QUICK=1: the cluster alone (one sbatch job with a nested srun), no DAG. The work folder is kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    PYTHON="$ROOT/.venv/bin/python"
    [ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
fi
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/gmflow-slurm.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

skip() { echo "skipped: $*"; exit 0; }
say() { echo "slurm_test: $*" >&2; }

# ------------------------------------------------------------------------------------------------- 1. the packages
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
missing() { for b in munged slurmctld slurmd sbatch srun squeue sinfo scancel; do command -v "$b" >/dev/null || echo "$b"; done; }
if [ -n "$(missing)" ] && [ -z "${SLURM_TEST_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1 \
    && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    say "installing Debian packages slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >"$WORK/apt.log" 2>&1 \
        || { $SUDO apt-get update -q >>"$WORK/apt.log" 2>&1 \
             && $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$WORK/apt.log" 2>&1; } \
        || true
fi
[ -z "$(missing)" ] || skip "$(missing | tr '\n' ' ')not found and slurm-wlm/munge could not be installed (apt-get as root)"
if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    skip "slurmd must run as root to start jobs (not root, and no password-less sudo)"
fi
"$PYTHON" -c "import snakemake, snakemake_executor_plugin_slurm" 2>/dev/null \
    || skip "$PYTHON has no snakemake-executor-plugin-slurm (pip install -e . installs the pinned one)"

# ------------------------------------------------------------------------------------------ 2. configuration files
HOST="$(hostname -s)"
USER_NAME="$(id -un)"
ETC="$WORK/etc"; STATE="$WORK/state"; SPOOL="$WORK/spool"; LOGS="$WORK/log"; RUN="$WORK/run"
mkdir -p "$ETC" "$STATE" "$SPOOL/$(hostname -s)" "$LOGS" "$RUN/munge"
chmod 755 "$RUN/munge"  # clients of every user reach the socket
# a fresh key for this test's munged alone (the system's munge key and daemon are not used)
head -c 1024 /dev/urandom >"$ETC/munge.key"
chmod 600 "$ETC/munge.key"
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT="$(free_port)"; SLURMD_PORT="$(free_port)"
# this host's CPUs, cores and memory as slurmd sees them (RealMemory a little below, so that the node is accepted)
NODE_LINE="$(slurmd -C | head -1)"
MEM="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
NODE_HW="$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' -e 's/ *UpTime=.*//' <<<"$NODE_LINE")"
MEM=$((MEM * 9 / 10))
SLURM_USER="$USER_NAME"  # root here, or the user whose sudo starts the daemons
[ -z "$SUDO" ] || SLURM_USER="root"
PARTITION="gmflowtest"
cat >"$ETC/slurm.conf" <<EOF
# single-node test cluster written by scripts/slurm_test.sh
ClusterName=gmflowtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$SLURM_USER
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for an hour: job states come from squeue, there is no accounting database
MinJobAge=3600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
: >"$ETC/plugstack.conf"
echo "PlugStackConfig=$ETC/plugstack.conf" >>"$ETC/slurm.conf"
export SLURM_CONF="$ETC/slurm.conf"
# Inside a job the executor starts each rule with a nested srun after dropping every SLURM_* variable, SLURM_CONF
# too: a cluster's srun finds /etc/slurm/slurm.conf (or its configless cache), this test's config lives here. An srun
# first on PATH (which is kept) puts SLURM_CONF back; nothing outside this folder is touched.
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$WORK/bin/srun"
chmod +x "$WORK/bin/srun"
export PATH="$WORK/bin:$PATH"

# ----------------------------------------------------------------------------------------------- 3. the daemons
PIDS=()
stop() {
    local rc=$?
    set +e
    if [ "${#PIDS[@]}" -gt 0 ]; then
        local left
        left="$(squeue -h -o %i 2>/dev/null)"
        [ -z "$left" ] || { say "cancelling jobs left in the queue: $left"; scancel $left 2>/dev/null; sleep 2; }
        say "stopping the daemons this script started (pids ${PIDS[*]})"
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            $SUDO kill "${PIDS[i]}" 2>/dev/null
            for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.2; done
            kill -0 "${PIDS[i]}" 2>/dev/null && $SUDO kill -9 "${PIDS[i]}" 2>/dev/null
        done
    fi
    exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT TERM

$SUDO munged --foreground --force --key-file "$ETC/munge.key" --socket "$RUN/munge/munge.socket" \
    --pid-file "$RUN/munged.pid" --log-file "$LOGS/munged.log" --seed-file "$RUN/munge.seed" \
    >>"$LOGS/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$RUN/munge/munge.socket" ] && break; sleep 0.2; done
[ -S "$RUN/munge/munge.socket" ] || { cat "$LOGS/munged.log" >&2 || true; skip "munged did not start (log above)"; }
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -D -c -f "$SLURM_CONF" >>"$LOGS/slurmctld.out" 2>&1 &
PIDS+=($!)
sleep 1
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd -D -f "$SLURM_CONF" >>"$LOGS/slurmd.out" 2>&1 &
PIDS+=($!)
say "waiting for node $HOST to be idle"
STATE_NOW=""
for _ in $(seq 120); do
    STATE_NOW="$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1)"
    [ "$STATE_NOW" = "idle" ] && break
    sleep 1
done
if [ "$STATE_NOW" != "idle" ]; then
    tail -20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    echo "slurm_test: node $HOST did not become idle (state: '${STATE_NOW:-none}'; logs above)" >&2
    exit 1
fi
sinfo >&2
if [ -n "${SLURM_TEST_QUICK:-}" ]; then  # the cluster alone: one sbatch job, no DAG
    JOB="$(sbatch --parsable -p "$PARTITION" -o "$WORK/quick.out" --wrap 'env -u SLURM_CONF srun hostname')"
    for _ in $(seq 60); do [ "$(squeue -h -t all -j "$JOB" -o %T)" = "COMPLETED" ] && break; sleep 1; done
    squeue -h -t all -j "$JOB" -o '%i %T %N' >&2; cat "$WORK/quick.out" >&2
    [ "$(squeue -h -t all -j "$JOB" -o %T)" = "COMPLETED" ] && { echo "slurm_test: quick check passed"; exit 0; }
    echo "slurm_test: the quick sbatch job did not complete" >&2; exit 1
fi

# ------------------------------------------------------------------------------------- 4. the DAG: SLURM, then local
export PATH="$(dirname "$PYTHON"):$PATH"   # the jobs' `python` (sbatch passes this environment on)
cd "$ROOT"
# the partition reaches sbatch through the config's resources section (resources.partition -> slurm_partition)
printf 'resources: {partition: %s}\n' "$PARTITION" >"$WORK/slurm-overlay.yaml"
SLURM_RES="$WORK/results-slurm"; LOCAL_RES="$WORK/results-local"
start=$(date +%s)
say "SLURM run -> $SLURM_RES"
"$PYTHON" -m snakemake --profile workflow/profiles/slurm --configfile config/ci.yaml "$WORK/slurm-overlay.yaml" \
    --config results="$SLURM_RES" --slurm-no-account --slurm-status-command squeue \
    --slurm-init-seconds-before-status-checks 5 --slurm-logdir "$WORK/slurm-logs" --latency-wait 10 --retries 0 \
    >"$LOGS/snakemake-slurm.log" 2>&1 \
    || { tail -40 "$LOGS/snakemake-slurm.log" >&2; echo "slurm_test: the SLURM run failed" >&2; exit 1; }
slurm_seconds=$(($(date +%s) - start))
SLURM_JOBS="$(squeue -h -t all -o %i | wc -l)"
SLURM_NODES="$(squeue -h -t all -o %N | sort -u | tr '\n' ' ')"
start=$(date +%s)
say "local run -> $LOCAL_RES"
"$PYTHON" -m snakemake --profile workflow/profiles/local --cores 2 --configfile config/ci.yaml \
    --config results="$LOCAL_RES" >"$LOGS/snakemake-local.log" 2>&1 \
    || { tail -40 "$LOGS/snakemake-local.log" >&2; echo "slurm_test: the local run failed" >&2; exit 1; }
local_seconds=$(($(date +%s) - start))

# ----------------------------------------------------------------------------------------- 5. compare the tables
"$PYTHON" - "$SLURM_RES" "$LOCAL_RES" <<'EOF'
"""Every CSV under tables/ (the DAG's result tables) equal in both runs, except measured wall-clock durations."""
import sys
from pathlib import Path

import pandas as pd

slurm, local = map(Path, sys.argv[1:3])
names = sorted(p.relative_to(local) for p in (local / "tables").rglob("*.csv"))
assert names, "no tables in the local run"
assert names == sorted(p.relative_to(slurm) for p in (slurm / "tables").rglob("*.csv")), "different table files"
TIMED = ("seconds", "wall")  # measured durations: they differ between any two runs
bad, skipped = [], set()
for name in names:
    a, b = pd.read_csv(slurm / name), pd.read_csv(local / name)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        bad.append(f"{name}: columns or row count differ")
        continue
    rows = pd.Series(True, index=a.index)
    if "metric" in a.columns:
        timed_rows = a["metric"].astype(str).str.contains("|".join(TIMED))
        skipped |= {f"{name}: metric {m}" for m in a.loc[timed_rows, "metric"].unique()}
        rows = ~timed_rows
    for c in a.columns:
        if any(t in c.lower() for t in TIMED):
            skipped.add(f"{name}: column {c}")
            continue
        if not a.loc[rows, c].equals(b.loc[rows, c]):
            bad.append(f"{name}: column {c} differs")
same = sum((slurm / n).read_bytes() == (local / n).read_bytes() for n in names)
print(f"compared {len(names)} tables ({same} byte-identical): " + ("equal" if not bad else "DIFFERENT"))
for line in sorted(skipped):
    print(f"  not compared (measured time): {line}")
for line in bad:
    print(f"  {line}")
sys.exit(1 if bad else 0)
EOF
echo "slurm_test: passed: $SLURM_JOBS sbatch jobs on node(s) $SLURM_NODES in ${slurm_seconds}s (SLURM run);" \
    "local run ${local_seconds}s; tables equal; work folder $WORK"
