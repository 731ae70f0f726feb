#!/usr/bin/env bash
# Runs COMMAND on this host with its output in LOGDIR/<host>.log, where LOGDIR may be an
# object-store URI (gs://...): objects cannot be appended to, so the log is written to
# ~/merlin_logs/<host>.log and copied to LOGDIR/<host>.log (`gcloud storage cp`) every
# MERLIN_LOG_SYNC_S seconds (default 60) and once more when COMMAND ends. Exits with
# COMMAND's status. Used by launch/tpu_pod.sh for a gs:// workdir (started detached there).
#
#   launch/log_to_uri.sh gs://BUCKET/merlin/run/logs ~/venv/bin/python -m merlin_jax.main ...
set -u
[[ $# -ge 2 ]] || { echo "usage: $0 LOGDIR COMMAND [ARG...]" >&2; exit 2; }
logdir="${1%/}"; shift
host="$(hostname)"
if [[ "$logdir" != *://* ]]; then
  mkdir -p "$logdir"
  exec "$@" >>"$logdir/$host.log" 2>&1
fi
local_log="$HOME/merlin_logs/$host.log"
mkdir -p "$(dirname "$local_log")"
upload() { gcloud storage cp --quiet "$local_log" "$logdir/$host.log" >/dev/null 2>&1 || true; }
"$@" >>"$local_log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT   # a stop of this wrapper reaches the job
while kill -0 "$pid" 2>/dev/null; do
  sleep "${MERLIN_LOG_SYNC_S:-60}" & wait $! 2>/dev/null
  upload
done
wait "$pid"
rc=$?
upload
exit "$rc"
