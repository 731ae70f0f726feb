#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: every worker runs the same `merlin_jax.main` command;
# JAX joins them with jax.distributed (auto-detected on TPU VMs) into one mesh.
#
#   launch/tpu_pod.sh --name=merlin-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --config=configs/food_cub.py --workdir=gs://my-bucket/merlin/food_cub \
#       --data-dir=gs://my-bucket/tensorflow_datasets \
#       [--project=P] [--version=RUNTIME] [--steps=create,copy,setup,run] [--wait] [--delete]
#       [--spot] [--job=NAME] [--dry-run] [-- --config.seed=1 ...]
#
# Steps (default: create,copy,setup,run):
#   create  gcloud compute tpus tpu-vm create (with --spot: a queued resource,
#           `gcloud compute tpus queued-resources create ... --spot`, then waits until it is
#           ACTIVE), with the TPU software version of the
#           accelerator type (v2/v3/v4: tpu-ubuntu2204-base, v5e/v5litepod: v2-alpha-tpuv5-lite,
#           v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e; --version=... overrides)
#   copy    the repository's tracked files as a tarball to every worker (--worker=all)
#   setup   python3.11 venv + requirements.txt + jax[tpu] on every worker (and gcsfuse)
#   run     merlin_jax.main on every worker, --multihost=on, DETACHED (setsid nohup) inside
#           launch/tpu_worker.sh's restart loop: the job survives a dropped SSH session, and
#           after a preemption notice or a dead worker (status 75) or a kill it restarts and
#           resumes from the workdir by itself; each worker logs to WORKDIR/logs/<host>.log.
#           The job's pid file is ~/merlin_jobs/JOB.pid on each worker (JOB: --job, default
#           the TPU name). The script prints how to follow the logs and how to stop the job.
#   stop    SIGTERM to the job's process group (its pid file) on every worker: each saves
#           a checkpoint of its current step and exits 75, with no restart; running the
#           same `run` again resumes. Another job on the workers is not touched.
#   supervise  for a spot pod, with nobody watching (run it in tmux/screen or a small VM):
#           every MERLIN_SUPERVISE_S (300) s, the queued resource's state; when the pod was
#           preempted (SUSPENDED/FAILED, or gone) it is deleted and created again, copied,
#           set up and the job started again (it resumes from the workdir); ends when
#           worker 0's ~/merlin_jobs/JOB.status says 0 (done).
# --wait waits (polling over SSH; a drop only ends the wait, not the job) until the job has
# ended on every worker; --delete waits, then deletes the TPU VM.
#
# Data: TFDS reads gs:// directly (--data-dir -> --config.data.data_dir=gs://...); prepare it
# once from any machine
# (`python -m merlin_jax.data.prepare food101 --data_dir=gs://my-bucket/tensorflow_datasets`).
# Workdir: one location every worker sees (orbax writes checkpoints from all hosts): a
# gs:// URI (written directly; each worker's log is written locally to ~/merlin_logs and
# copied to WORKDIR/logs/<host>.log every minute by launch/log_to_uri.sh), or a path every
# worker sees (an NFS/Filestore mount). --gcsfuse is refused: a gcsfuse mount has no atomic
# directory rename, which orbax needs to commit a checkpoint; use the gs:// workdir.
# DRY_RUN=1 or --dry-run prints the commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" PROJECT="" ACCEL="v4-32" VERSION=""
CONFIG="" WORKDIR="" DATA_DIR="" GCSFUSE="" STEPS="create,copy,setup,run" DELETE=0 WAIT=0
PYTHON="python3.11" JAX_VERSION="0.10.2" REMOTE_DIR="merlin_jax" SPOT=0 JOB=""
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
    --spot) SPOT=1 ;;
    --job=*) JOB="${1#*=}" ;;
    --steps=*) STEPS="${1#*=}" ;;
    --delete) DELETE=1; WAIT=1 ;;
    --wait) WAIT=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need_value --name "$NAME"
need_value --zone "$ZONE"
JOB="${JOB:-$NAME}"
[[ "$JOB" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job=$JOB: letters, digits, _ . - only"
[[ -z "$GCSFUSE" ]] || die "--gcsfuse: a gcsfuse mount cannot rename directories atomically," \
  "which orbax needs to commit a checkpoint; give --workdir=gs://$GCSFUSE/... instead (written" \
  "directly, logs copied to WORKDIR/logs)"
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

QR=(gcloud compute tpus queued-resources)
create_pod() {
  if [[ "$SPOT" == 1 ]]; then
    # Spot capacity through a queued resource: granted when available, preempted at any
    # time (the restart loop and `supervise` take it from there).
    run "${QR[@]}" create "$NAME" "${WHERE[@]}" "--node-id=$NAME" "--accelerator-type=$ACCEL" \
      "--runtime-version=$VERSION" --spot
    wait_active
  else
    run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION"
  fi
}
query() {  # a command whose output is wanted: shown on stderr, not run under DRY_RUN=1
  show_cmd "$@" >&2
  [[ "$DRY_RUN" == 1 ]] || "$@" 2>/dev/null || true
}
qr_state() {  # the queued resource's state (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...)
  query "${QR[@]}" describe "$NAME" "${WHERE[@]}" "--format=value(state.state)"
}
wait_active() {
  local state
  while :; do
    state="$(qr_state)"
    [[ "$DRY_RUN" == 1 || "$state" == ACTIVE ]] && return 0
    case "$state" in
      FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
    esac
    sleep "${MERLIN_SUPERVISE_S:-300}"
  done
}
if has_step create; then
  create_pod
fi

copy_code() {
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  TARBALL="${TMPDIR:-/tmp}/merlin_jax_code.tar.gz"
  # Tracked files only (no venvs, workdirs or data).
  run git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:merlin_jax_code.tar.gz" "${WHERE[@]}" --worker=all
  ssh_all "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/merlin_jax_code.tar.gz -C ~/$REMOTE_DIR"
}
has_step copy && copy_code

setup_workers() {
  ssh_all "sudo apt-get update -q && sudo apt-get install -y -q $PYTHON ${PYTHON}-venv && \
cd ~/$REMOTE_DIR && $PYTHON -m venv ~/venv && ~/venv/bin/pip install -q -r requirements.txt \
'jax[tpu]==$JAX_VERSION'"
}
has_step setup && setup_workers

LOGS="$WORKDIR/logs"
# The job on a worker: launch/tpu_worker.sh's pid file, whose pid is the job's process group.
PIDFILE="~/merlin_jobs/$JOB.pid"
STATUS="~/merlin_jobs/$JOB.status"

start_job() {
  ARGS=(-m merlin_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" --multihost=on)
  [[ -n "$DATA_DIR" ]] && ARGS+=("--config.data.data_dir=$DATA_DIR")
  ARGS+=("${EXTRA[@]}")
  # setsid + nohup: not a child of the SSH session, so a dropped connection (or Ctrl-C of
  # this script) leaves the job running; stdin from /dev/null, output to the worker's log
  # (for a gs:// workdir through launch/log_to_uri.sh: written locally, copied every minute).
  # launch/tpu_worker.sh: the restart loop, the pid file, one process group (setsid).
  if [[ "$WORKDIR" == gs://* ]]; then
    ssh_all "cd ~/$REMOTE_DIR && setsid nohup launch/tpu_worker.sh $JOB launch/log_to_uri.sh \
$(quote_arg "$LOGS") ~/venv/bin/python $(join_quoted "${ARGS[@]}") </dev/null >/dev/null 2>&1 & \
echo started on \$(hostname)"
  else
    ssh_all "mkdir -p $(quote_arg "$LOGS") && cd ~/$REMOTE_DIR && setsid nohup \
launch/tpu_worker.sh $JOB ~/venv/bin/python $(join_quoted "${ARGS[@]}") </dev/null \
>>$(quote_arg "$LOGS")/\$(hostname).log 2>&1 & echo started on \$(hostname)"
  fi
}

if has_step run; then
  start_job
  SSH0=("${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}")
  printf 'The job runs detached on every worker; logs: %s/<worker host>.log\n' "$LOGS"
  FOLLOW="$LOGS"
  [[ "$WORKDIR" == gs://* ]] && FOLLOW="~/merlin_logs"   # gs:// copies lag up to a minute
  printf 'Follow worker 0:  %s\n' "$(join_quoted "${SSH0[@]}" --worker=0 \
    "--command=tail -F $FOLLOW/*.log")"
  printf 'Stop (checkpoint, exit 75; run again to resume):  %s\n' \
    "$(join_quoted "$0" "--name=$NAME" "${WHERE[@]}" "--job=$JOB" --steps=stop)"
fi

if has_step stop; then
  ssh_all "test -f $PIDFILE && kill -TERM -- -\$(cat $PIDFILE) || true"
fi

if [[ "$WAIT" == 1 ]]; then
  ssh_all "while test -f $PIDFILE && kill -0 \$(cat $PIDFILE) 2>/dev/null; do sleep 60; done"
fi

if has_step supervise; then
  [[ "$SPOT" == 1 ]] || die "supervise: for a spot pod (--spot)"
  need_value --config "$CONFIG"
  need_value --workdir "$WORKDIR"
  while :; do
    state="$(qr_state)"
    if [[ "$state" == ACTIVE ]]; then
      done_rc="$(query "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 \
        "--command=cat $STATUS 2>/dev/null || true")"
      if [[ "$done_rc" == 0 ]]; then
        printf 'supervise: job %s is done\n' "$JOB"
        break
      fi
    elif [[ -z "$state" || "$state" == SUSPENDED || "$state" == FAILED ]]; then
      # SUSPENDED: the spot pod was preempted and its VMs deleted; it will not come back.
      printf 'supervise: queued resource %s is %s: creating it again\n' "$NAME" "${state:-gone}"
      run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet || true
      create_pod && copy_code && setup_workers && start_job
    fi   # else (WAITING_FOR_RESOURCES, PROVISIONING, SUSPENDING, ...): keep its place, wait
    [[ "$DRY_RUN" == 1 ]] && break
    sleep "${MERLIN_SUPERVISE_S:-300}"
  done
fi

if [[ "$DELETE" == 1 ]]; then
  if [[ "$SPOT" == 1 ]]; then
    run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
fi
