#!/usr/bin/env bash
# Train as a Slurm batch job that survives preemption: submit once, Slurm restarts it.
#
#   launch/slurm.sh --config=configs/food_cub.py --workdir=/shared/merlin/food_cub \
#       [--nodes=1] [--gpus-per-node=8] [--gpu-binding=shared|task|node] [--ntasks-per-node=N]
#       [--cpus-per-task=N] [--partition=P] [--qos=Q] [--account=A] [--time=24:00:00]
#       [--signal-s=300] [--max-restarts=20] [--job-name=merlin] [--venv=VENV]
#       [--log-dir=DIR] [--dry-run] [-- EXTRA]
#
# `sbatch --requeue --signal=B:TERM@S` of launch/slurm_job.sh, which `srun`s one JAX process
# per task (--multihost=on: jax.distributed reads the SLURM_* variables):
# - --requeue: after a preemption or a node failure Slurm puts the job back in the queue;
#   every start runs the same command, which resumes from the workdir's last checkpoint.
# - --signal=B:TERM@S (default 300 s): S seconds before --time runs out the job gets SIGTERM,
#   saves a checkpoint and exits 75, and the batch script requeues it (exit 75 = "restart
#   me", also after a dead worker); a preemption's SIGTERM saves the same way (within the
#   partition's GraceTime / KillWait).
# - Logs: --output=LOG_DIR/slurm-<jobid>.log, appended across restarts (default
#   WORKDIR/logs; give --log-dir for a gs:// workdir).
# - CPUs: --cpus-per-task only when given; otherwise each task gets its node's CPUs / its
#   tasks (derived in the batch script from the allocation).
# --gpus-per-node=0: CPU tasks (give --ntasks-per-node; JAX_PLATFORMS=cpu is set).
# Prints the job id. DRY_RUN=1 or --dry-run prints the sbatch command instead.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

CONFIG="" WORKDIR="" DATA_DIR="" NODES=1 GPUS_PER_NODE=8 TASKS_PER_NODE="" CPUS_PER_TASK=""
PARTITION="" QOS="" ACCOUNT="" TIME="" SIGNAL_S=300 MAX_RESTARTS=20 JOB_NAME=merlin
BINDING=shared LOG_DIR=""
VENV="${VENV:-$ROOT/.venv}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --gpu-binding=*) BINDING="${1#*=}" ;;
    --ntasks-per-node=*) TASKS_PER_NODE="${1#*=}" ;;
    --cpus-per-task=*) CPUS_PER_TASK="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --qos=*) QOS="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --signal-s=*) SIGNAL_S="${1#*=}" ;;
    --max-restarts=*) MAX_RESTARTS="${1#*=}" ;;
    --job-name=*) JOB_NAME="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --log-dir=*) LOG_DIR="${1#*=}" ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need_value --config "$CONFIG"
need_value --workdir "$WORKDIR"
[[ "$SIGNAL_S" =~ ^[0-9]+$ ]] || die "--signal-s: seconds, not $SIGNAL_S"
if [[ -z "$LOG_DIR" ]]; then
  [[ "$WORKDIR" == *://* ]] && die "--workdir=$WORKDIR is not a path Slurm can write its log" \
    "to: give --log-dir=DIR on a filesystem the first node sees"
  LOG_DIR="$WORKDIR/logs"
fi
# Absolute paths: the job may start in another directory on another node.
[[ "$WORKDIR" == *://* || "$WORKDIR" == /* ]] || WORKDIR="$PWD/$WORKDIR"
[[ "$LOG_DIR" == /* ]] || LOG_DIR="$PWD/$LOG_DIR"
[[ "$CONFIG" == /* || ! -e "$CONFIG" ]] || CONFIG="$PWD/$CONFIG"
[[ "$VENV" == /* ]] || VENV="$PWD/$VENV"

CPU_ONLY=""
[[ "$GPUS_PER_NODE" == 0 ]] && CPU_ONLY=1
SBATCH=(sbatch --parsable --requeue "--signal=B:TERM@$SIGNAL_S" "--job-name=$JOB_NAME"
        "--nodes=$NODES" "--output=$LOG_DIR/slurm-%j.log" --open-mode=append "--chdir=$ROOT"
        "--export=ALL,MERLIN_MAX_RESTARTS=$MAX_RESTARTS${CPU_ONLY:+,JAX_PLATFORMS=cpu}")
if [[ "$GPUS_PER_NODE" == 0 ]]; then
  SBATCH+=("--ntasks-per-node=${TASKS_PER_NODE:-1}")
else
  case "$BINDING" in
    shared) SBATCH+=("--ntasks-per-node=${TASKS_PER_NODE:-$GPUS_PER_NODE}" "--gpus-per-node=$GPUS_PER_NODE") ;;
    task) SBATCH+=("--ntasks-per-node=${TASKS_PER_NODE:-$GPUS_PER_NODE}" --gpus-per-task=1) ;;
    node) SBATCH+=(--ntasks-per-node=1 "--gpus-per-node=$GPUS_PER_NODE") ;;
    *) die "--gpu-binding=$BINDING: use shared, task or node" ;;
  esac
fi
[[ -n "$CPUS_PER_TASK" ]] && SBATCH+=("--cpus-per-task=$CPUS_PER_TASK")
[[ -n "$PARTITION" ]] && SBATCH+=("--partition=$PARTITION")
[[ -n "$QOS" ]] && SBATCH+=("--qos=$QOS")
[[ -n "$ACCOUNT" ]] && SBATCH+=("--account=$ACCOUNT")
[[ -n "$TIME" ]] && SBATCH+=("--time=$TIME")

MAIN=("$VENV/bin/python" -m merlin_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" --multihost=on)
[[ -n "$DATA_DIR" ]] && MAIN+=("--config.data.data_dir=$DATA_DIR")
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOG_DIR"
run "${SBATCH[@]}" "$ROOT/launch/slurm_job.sh" "${MAIN[@]}" "${EXTRA[@]}"
