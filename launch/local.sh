#!/usr/bin/env bash
# N processes on this machine joined by jax.distributed: a multi-host run rehearsed locally.
# CPU only (JAX_PLATFORMS=cpu), gloo cross-process collectives, an explicit coordinator on a
# free 127.0.0.1 port; each process gets --devices fake CPU devices.
#
#   launch/local.sh --processes=2 --config=configs/digits.py:local --workdir=/tmp/merlin/mp \
#       [--devices=1] [--timeout=1800] [--dry-run] [-- --config.total_steps=20 ...]
#
# Process 0 prints to the terminal; process i>0 logs to WORKDIR/process_<i>.log. Exits
# non-zero if any process fails (the others are stopped).
# DRY_RUN=1 or --dry-run prints the commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROCESSES=2 DEVICES=1 CONFIG="" WORKDIR="" TIMEOUT=1800 PORT=""
PYTHON="${PYTHON:-python3}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --processes=*) PROCESSES="${1#*=}" ;;
    --devices=*) DEVICES="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --timeout=*) TIMEOUT="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need_value --config "$CONFIG"
need_value --workdir "$WORKDIR"
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer"
if [[ -z "$PORT" ]]; then  # a free port: bind to 0 and read what the OS gave
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
COORDINATOR="127.0.0.1:$PORT"
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$WORKDIR"

PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap stop_all INT TERM

for ((i = 0; i < PROCESSES; i++)); do
  CMD=(timeout "$TIMEOUT" env JAX_PLATFORMS=cpu
       "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES"
       "$PYTHON" -m merlin_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" --multihost=on
       "--coordinator_address=$COORDINATOR" "--num_processes=$PROCESSES" "--process_id=$i"
       "--distributed_timeout=$TIMEOUT" "${EXTRA[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then
    show_cmd "${CMD[@]}"
    continue
  fi
  show_cmd "${CMD[@]}"
  if ((i == 0)); then
    "${CMD[@]}" &
  else
    "${CMD[@]}" >"$WORKDIR/process_$i.log" 2>&1 &
  fi
  PIDS+=("$!")
done

STATUS=0
for ((i = 0; i < ${#PIDS[@]}; i++)); do
  if ! wait "${PIDS[$i]}"; then
    STATUS=1
    printf 'local.sh: process %d failed' "$i" >&2
    ((i > 0)) && printf ' (log: %s)' "$WORKDIR/process_$i.log" >&2
    printf '\n' >&2
    stop_all
  fi
done
exit "$STATUS"
