#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: every worker runs the same `merlin_jax.main` command;
# JAX joins them with jax.distributed (auto-detected on TPU VMs) into one mesh.
#
#   launch/tpu_pod.sh --name=merlin-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --config=configs/food_cub.py --workdir=gs://my-bucket/merlin/food_cub \
#       --data-dir=gs://my-bucket/tensorflow_datasets \
#       [--project=P] [--version=RUNTIME] [--steps=create,copy,setup,run] [--wait] [--delete]
#       [--dry-run] [-- --config.seed=1 ...]
#
# Steps (default: create,copy,setup,run):
#   create  gcloud compute tpus tpu-vm create, with the TPU software version of the
#           accelerator type (v2/v3/v4: tpu-ubuntu2204-base, v5e/v5litepod: v2-alpha-tpuv5-lite,
#           v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e; --version=... overrides)
#   copy    the repository's tracked files as a tarball to every worker (--worker=all)
#   setup   python3.11 venv + requirements.txt + jax[tpu] on every worker (and gcsfuse)
#   run     merlin_jax.main on every worker, --multihost=on, DETACHED (setsid nohup): the job
#           survives a dropped SSH session; each worker logs to WORKDIR/logs/<host>.log. The
#           script prints how to follow the logs and how to stop the job.
#   stop    SIGTERM to the job on every worker: each saves a checkpoint of its current step
#           and exits 75; running the same `run` again resumes.
# --wait waits (polling over SSH; a drop only ends the wait, not the job) until the job has
# ended on every worker; --delete waits, then deletes the TPU VM.
#
# Data: TFDS reads gs:// directly (--data-dir -> --config.data.data_dir=gs://...); prepare it
# once from any machine
# (`python -m merlin_jax.data.prepare food101 --data_dir=gs://my-bucket/tensorflow_datasets`).
# Workdir: one location every worker sees (orbax writes checkpoints from all hosts): a
# gs:// URI (written directly; each worker's log is written locally to ~/merlin_logs and
# copied to WORKDIR/logs/<host>.log every minute by launch/log_to_uri.sh), or a mounted
# path (--gcsfuse=BUCKET mounts gs://BUCKET at /mnt/BUCKET on every worker).
# DRY_RUN=1 or --dry-run prints the commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" PROJECT="" ACCEL="v4-32" VERSION=""
CONFIG="" WORKDIR="" DATA_DIR="" GCSFUSE="" STEPS="create,copy,setup,run" DELETE=0 WAIT=0
PYTHON="python3.11" JAX_VERSION="0.10.2" REMOTE_DIR="merlin_jax"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --gcsfuse=*) GCSFUSE="${1#*=}" ;;
    --steps=*) STEPS="${1#*=}" ;;
    --delete) DELETE=1; WAIT=1 ;;
    --wait) WAIT=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need_value --name "$NAME"
need_value --zone "$ZONE"
[[ ",$STEPS," == *,run,* ]] && { need_value --config "$CONFIG"; need_value --workdir "$WORKDIR"; }
[[ "$WORKDIR" == *://* && "$WORKDIR" != gs://* ]] && die "--workdir: a path every worker " \
  "sees or a gs:// URI, not $WORKDIR"

# The TPU software version of the accelerator type (Cloud TPU's "TPU software versions").
runtime_version() {
  case "$1" in
    v2-*|v3-*|v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}
if [[ -z "$VERSION" ]]; then
  VERSION="$(runtime_version "$ACCEL")" || die "no known TPU software version for\
 --accelerator-type=$ACCEL (v2-v4, v5litepod/v5e, v5p, v6e); give --version=..."
fi

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=("--project=$PROJECT")
ssh_all() {  # ssh_all COMMAND: one command on every worker at once
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$1"
}
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

if has_step create; then
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION"
fi

if has_step copy; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  TARBALL="${TMPDIR:-/tmp}/merlin_jax_code.tar.gz"
  # Tracked files only (no venvs, workdirs or data).
  run git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:merlin_jax_code.tar.gz" "${WHERE[@]}" --worker=all
  ssh_all "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/merlin_jax_code.tar.gz -C ~/$REMOTE_DIR"
fi

if has_step setup; then
  ssh_all "sudo apt-get update -q && sudo apt-get install -y -q $PYTHON ${PYTHON}-venv && \
cd ~/$REMOTE_DIR && $PYTHON -m venv ~/venv && ~/venv/bin/pip install -q -r requirements.txt \
'jax[tpu]==$JAX_VERSION'"
  if [[ -n "$GCSFUSE" ]]; then
    ssh_all "(command -v gcsfuse || (echo 'deb https://packages.cloud.google.com/apt \
gcsfuse-\$(lsb_release -c -s) main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list && \
curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && \
sudo apt-get update -q && sudo apt-get install -y -q gcsfuse)) && sudo mkdir -p /mnt/$GCSFUSE && \
sudo chown \$USER /mnt/$GCSFUSE && (mountpoint -q /mnt/$GCSFUSE || \
gcsfuse --implicit-dirs $GCSFUSE /mnt/$GCSFUSE)"
  fi
fi

LOGS="$WORKDIR/logs"
# The job's processes on a worker (pgrep/pkill -f regex; the brackets keep it from matching
# the remote shell whose command line holds the pattern itself).
MATCH="[v]env/bin/python -m merlin_jax.main"

if has_step run; then
  ARGS=(-m merlin_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" --multihost=on)
  [[ -n "$DATA_DIR" ]] && ARGS+=("--config.data.data_dir=$DATA_DIR")
  ARGS+=("${EXTRA[@]}")
  # setsid + nohup: not a child of the SSH session, so a dropped connection (or Ctrl-C of
  # this script) leaves the job running; stdin from /dev/null, output to the worker's log
  # (for a gs:// workdir through launch/log_to_uri.sh: written locally, copied every minute).
  if [[ "$WORKDIR" == gs://* ]]; then
    ssh_all "cd ~/$REMOTE_DIR && setsid nohup launch/log_to_uri.sh $(quote_arg "$LOGS") \
~/venv/bin/python $(join_quoted "${ARGS[@]}") </dev/null >/dev/null 2>&1 & \
echo started on \$(hostname)"
  else
    ssh_all "mkdir -p $(quote_arg "$LOGS") && cd ~/$REMOTE_DIR && setsid nohup \
~/venv/bin/python $(join_quoted "${ARGS[@]}") </dev/null \
>>$(quote_arg "$LOGS")/\$(hostname).log 2>&1 & echo started on \$(hostname)"
  fi
  SSH0=("${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}")
  printf 'The job runs detached on every worker; logs: %s/<worker host>.log\n' "$LOGS"
  FOLLOW="$LOGS"
  [[ "$WORKDIR" == gs://* ]] && FOLLOW="~/merlin_logs"   # gs:// copies lag up to a minute
  printf 'Follow worker 0:  %s\n' "$(join_quoted "${SSH0[@]}" --worker=0 \
    "--command=tail -F $FOLLOW/*.log")"
  printf 'Stop (checkpoint, exit 75; run again to resume):  %s\n' \
    "$(join_quoted "$0" "--name=$NAME" "${WHERE[@]}" --steps=stop)"
fi

if has_step stop; then
  ssh_all "pkill -TERM -f '$MATCH' || true"
fi

if [[ "$WAIT" == 1 ]]; then
  ssh_all "while pgrep -f '$MATCH' >/dev/null; do sleep 60; done"
fi

if [[ "$DELETE" == 1 ]]; then
  run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
