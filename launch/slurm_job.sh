#!/usr/bin/env bash
# The batch script that launch/slurm.sh submits (`sbatch --requeue --signal=B:TERM@S`); it
# runs on the first node of the allocation, once per start of the job (Slurm runs it again
# after every requeue, with the same arguments: the run resumes from its workdir).
#
#   launch/slurm_job.sh PYTHON -m merlin_jax.main --config=... --workdir=... --multihost=on
#
# 1. One job step: `srun` starts the tasks (one JAX process each) with the CPUs per task the
#    allocation gives (SLURM_CPUS_PER_TASK when asked for, else the node's CPUs / its tasks).
# 2. SIGTERM to this script (`--signal=B:TERM@S` before the time limit, or Slurm ending the
#    job) is forwarded to the step: every process saves a checkpoint of its current step and
#    exits 75 (merlin_jax/preemption.py).
# 3. Exit 75 (preempted, or a dead peer: merlin_jax/runtime/lifeline.py) asks Slurm to requeue the
#    job (`scontrol requeue`), at most MERLIN_MAX_RESTARTS (default 20) times; any other
#    status ends the job with it (0: done; 2/3: bad input or a NaN, not worth a restart).
set -u
MAX_RESTARTS="${MERLIN_MAX_RESTARTS:-20}"
RESTART="${SLURM_RESTART_COUNT:-0}"
say() { printf 'slurm_job.sh: job %s: %s (%s)\n' "${SLURM_JOB_ID:-?}" "$*" "$(date -u +%FT%TZ)"; }
say "start $RESTART on $(hostname), $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s)"

# CPUs per task from the allocation, not a fixed number: srun does not inherit sbatch's
# --cpus-per-task in every Slurm version, so it is passed on explicitly.
TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE:-$(( (SLURM_NTASKS + SLURM_JOB_NUM_NODES - 1) / SLURM_JOB_NUM_NODES ))}"
NODE_CPUS="${SLURM_CPUS_ON_NODE:-1}"
CPUS="${SLURM_CPUS_PER_TASK:-$(( NODE_CPUS / TASKS_PER_NODE ))}"
(( CPUS >= 1 )) || CPUS=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS}"

# srun's status through a file: a `wait` cut short by the TERM trap loses it. The subshell
# outlives a job-wide SIGTERM (its trap) while srun, in its foreground, handles it.
RCFILE="$(mktemp)"
( trap 'true' TERM; srun --kill-on-bad-exit=1 "--cpus-per-task=$CPUS" "$@"; echo $? >"$RCFILE" ) &
STEP=$!
forwarded=0
forward() {
  (( forwarded )) && return
  forwarded=1
  say "SIGTERM: asking the processes to checkpoint and stop"
  # To the job's steps (the tasks), not to srun: srun answers SIGTERM by killing the step.
  scancel --signal=TERM "$SLURM_JOB_ID"
}
trap forward TERM
while kill -0 "$STEP" 2>/dev/null; do wait "$STEP"; done
RC="$(cat "$RCFILE" 2>/dev/null)"
RC="${RC:-1}"
rm -f "$RCFILE"
if (( RC == 75 )); then
  if (( RESTART < MAX_RESTARTS )); then
    say "stopped with status 75 (preempted or a dead worker): requeued to resume"
    # Fails harmlessly when Slurm is already requeueing the job (preemption, node failure).
    scontrol requeue "$SLURM_JOB_ID" || true
  else
    say "stopped with status 75 after $RESTART restarts (MERLIN_MAX_RESTARTS): not requeued"
  fi
else
  say "ended with status $RC"
fi
exit "$RC"
