# Shared by the build scripts beside it (sourced, not run).
#
# go_step WHAT WHY ESTIMATE LOG CMD...
#   Runs CMD with its output (the Go tool's `go: downloading ...` lines and compiler
#   messages) in LOG, after one line on stderr that says what is built, why, roughly how
#   long it takes and where the log is. On failure the log's tail is shown and the script
#   exits.
go_step() {
  local what=$1 why=$2 estimate=$3 log=$4
  shift 4
  mkdir -p "$(dirname "$log")"
  echo "building $what ($why; $estimate, once per version; log: $log)" >&2
  local start=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    echo "building $what failed; the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "built $what in $((SECONDS - start))s" >&2
}

# The root of every cache of ours, outside the repository.
cache_root() {
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/gitops-agent"
}
