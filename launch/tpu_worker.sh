#!/usr/bin/env bash
# On one worker of a TPU VM (started detached by launch/tpu_pod.sh's run step): runs COMMAND
# again and again until the run is done, as one process group with a pid file, so that
#   - a preempted run (status 75: SIGTERM, or a dead peer, merlin_jax/runtime/lifeline.py) or a
#     killed one (status > 128) restarts by itself after MERLIN_RESTART_DELAY_S (default 10)
#     and resumes from the workdir, at most MERLIN_MAX_RESTARTS (default 20) times;
#   - the job is found by what it is: ~/merlin_jobs/JOB.pid holds this loop's pid, which is
#     also its process group (setsid), so stop/wait target exactly this job
#     (`kill -TERM -- -PGID`), not a command-line pattern; another job on the worker is not
#     touched;
#   - a stop (SIGTERM to the group) lets the run checkpoint and exit 75, and does not restart;
#   - when the loop ends, ~/merlin_jobs/JOB.status holds the last status (0: done).
#
#   launch/tpu_worker.sh JOB COMMAND [ARG...]
set -u
[[ $# -ge 2 ]] || { echo "usage: $0 JOB COMMAND [ARG...]" >&2; exit 2; }
job="$1"; shift
dir="$HOME/merlin_jobs"
mkdir -p "$dir"
pidfile="$dir/$job.pid"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "tpu_worker.sh: job $job already runs here (pid $(cat "$pidfile"))" >&2
  exit 2
fi
echo $$ >"$pidfile"
rm -f "$dir/$job.status"
stopping=0
trap 'stopping=1' TERM INT   # the group's SIGTERM also reaches COMMAND, which saves
say() { printf 'tpu_worker.sh: %s: %s (%s)\n' "$job" "$*" "$(date -u +%FT%TZ)"; }
restarts=0
while :; do
  say "start $restarts on $(hostname)"
  # COMMAND's status through a file: a `wait` cut short by the trap loses it. The subshell
  # outlives the group's SIGTERM (a trap; COMMAND itself gets the default handling).
  rm -f "$dir/$job.rc"
  ( trap 'true' TERM INT; "$@"; echo $? >"$dir/$job.rc" ) &
  child=$!
  while kill -0 "$child" 2>/dev/null; do wait "$child"; done
  rc="$(cat "$dir/$job.rc" 2>/dev/null || echo 1)"
  if (( stopping )); then say "stopped (status $rc); run again to resume"; break; fi
  if (( rc == 75 || rc > 128 )) && (( restarts < ${MERLIN_MAX_RESTARTS:-20} )); then
    restarts=$((restarts + 1))
    say "status $rc (preempted, a dead peer or killed): restarting in ${MERLIN_RESTART_DELAY_S:-10} s"
    sleep "${MERLIN_RESTART_DELAY_S:-10}" & wait $!
    (( stopping )) && { say "stopped while waiting to restart"; break; }
    continue
  fi
  say "ended with status $rc"
  break
done
echo "$rc" >"$dir/$job.status"
rm -f "$pidfile" "$dir/$job.rc"
exit "$rc"
