#!/usr/bin/env bash
# Train on GPUs.
#
#   launch/gpu.sh local --config=configs/food_cub.py --workdir=/scratch/merlin/food_cub \
#       [--gpus=0,1,2,3] [--data-dir=gs://my-bucket/tensorflow_datasets] [--dry-run] [-- EXTRA]
#     one host, one process driving all its (or the listed) GPUs; no jax.distributed.
#
#   launch/gpu.sh sbatch --nodes=2 --gpus-per-node=8 --config=... --workdir=/shared/... [...]
#     a batch job that Slurm requeues after a preemption and that resumes by itself:
#     launch/slurm.sh (see its --help) with the same arguments.
#
#   launch/gpu.sh slurm --nodes=2 --gpus-per-node=8 --config=configs/food_cub.py \
#       --workdir=/shared/merlin/food_cub [--gpu-binding=shared|task|node] [--partition=P] \
#       [--time=24:00:00] [--account=A] [--cpus-per-task=N] [--data-dir=gs://...] \
#       [--dry-run] [-- EXTRA]
#     `srun` starts the processes on every node (inside an sbatch/salloc allocation or
#     creating one); jax.distributed.initialize reads the SLURM_* variables (coordinator =
#     first node, process id) and merlin_jax.runtime.distributed picks each process's GPUs from what
#     the task sees. --gpu-binding (how the cluster gives GPUs to tasks):
#       shared  one task per GPU, every task sees all GPUs of its node (the default)
#       task    one task per GPU, SLURM binds one GPU to each (--gpus-per-task=1): each
#               process sees a single device
#       node    one task per node driving all its GPUs
#     The workdir must be on a filesystem all nodes see.
#
# Environment set-up (once per cluster): python3.11 -m venv VENV && VENV/bin/pip install
# -r requirements.txt 'jax[cuda12]==0.10.2'; point VENV at it (default: ./.venv).
# DRY_RUN=1 or --dry-run prints the commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODE="${1:-}"
if [[ "$MODE" == sbatch ]]; then
  shift
  exec "$(dirname "${BASH_SOURCE[0]}")/slurm.sh" "$@"
fi
[[ "$MODE" == local || "$MODE" == slurm ]] || die "first argument: local, slurm or sbatch (see --help)"
shift
CONFIG="" WORKDIR="" DATA_DIR="" GPUS="" NODES=1 GPUS_PER_NODE=8 PARTITION="" TIME="" ACCOUNT=""
CPUS_PER_TASK="" BINDING=shared
VENV="${VENV:-.venv}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --gpus=*) GPUS="${1#*=}" ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --cpus-per-task=*) CPUS_PER_TASK="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --gpu-binding=*) BINDING="${1#*=}" ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need_value --config "$CONFIG"
need_value --workdir "$WORKDIR"

MAIN=("$VENV/bin/python" -m merlin_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
[[ -n "$DATA_DIR" ]] && MAIN+=("--config.data.data_dir=$DATA_DIR")

if [[ "$MODE" == local ]]; then
  ENV=(env)
  [[ -n "$GPUS" ]] && ENV+=("CUDA_VISIBLE_DEVICES=$GPUS")
  run "${ENV[@]}" "${MAIN[@]}" --multihost=off "${EXTRA[@]}"
else
  case "$BINDING" in
    shared) TASKS=("--ntasks-per-node=$GPUS_PER_NODE" "--gpus-per-node=$GPUS_PER_NODE") ;;
    task) TASKS=("--ntasks-per-node=$GPUS_PER_NODE" --gpus-per-task=1) ;;
    node) TASKS=(--ntasks-per-node=1 "--gpus-per-node=$GPUS_PER_NODE") ;;
    *) die "--gpu-binding=$BINDING: use shared, task or node" ;;
  esac
  SRUN=(srun "--nodes=$NODES" "${TASKS[@]}" --kill-on-bad-exit=1)
  # CPUs per task: as asked, else the allocation's default (no fixed number).
  [[ -n "$CPUS_PER_TASK" ]] && SRUN+=("--cpus-per-task=$CPUS_PER_TASK")
  [[ -n "$PARTITION" ]] && SRUN+=("--partition=$PARTITION")
  [[ -n "$TIME" ]] && SRUN+=("--time=$TIME")
  [[ -n "$ACCOUNT" ]] && SRUN+=("--account=$ACCOUNT")
  # --multihost=on: jax.distributed.initialize() with everything auto-detected from SLURM.
  run "${SRUN[@]}" "${MAIN[@]}" --multihost=on "${EXTRA[@]}"
fi
