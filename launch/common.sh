# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run).
#
# DRY_RUN=1 (or --dry-run, which the scripts turn into DRY_RUN=1) prints every command as
# one shell-quoted line starting with "+ " instead of running it; the output can be pasted
# into a shell, and tests/test_launch.py parses it with shlex.

DRY_RUN="${DRY_RUN:-0}"

# Quote one argument for display only when it needs it.
quote_arg() {
  local a="$1"
  if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$a"
  else
    printf "'%s'" "${a//\'/\'\\\'\'}"
  fi
}

show_cmd() {
  local out="+" a
  for a in "$@"; do
    out+=" $(quote_arg "$a")"
  done
  printf '%s\n' "$out"
}

# Run a command (or only print it under DRY_RUN=1).
run() {
  show_cmd "$@"
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

# Join arguments into one shell-quoted string (for ssh --command=..., srun bash -c ...).
join_quoted() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(quote_arg "$a")"
  done
  printf '%s' "$out"
}

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

need_value() {  # need_value FLAG VALUE
  [[ -n "${2:-}" ]] || die "$1 needs a value"
}
