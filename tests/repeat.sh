#!/usr/bin/env bash
# Run the test suite N times in a row on a clean clone of this checkout's HEAD and
# print how many runs passed and failed: the check that the suite is never flaky.
#
#   tests/repeat.sh [N] [pytest arguments...]      # N defaults to 10
#   tests/repeat.sh 10                             # the whole suite, ten times
#   tests/repeat.sh 1 -k sigterm tests/test_security.py
#
# Only committed work is tested (the clone is of HEAD). Each run starts from a
# clean tree (`git clean -fdx`, the clone's thin .venv aside) with pytest's cache
# off. Logs of every run stay under $REPEAT_DIR (default: a fresh temporary
# folder, printed at the end). Export REPLAYGATE_TEST_VLLM_URL to reuse a running
# vLLM instead of each run starting its own.
set -uo pipefail

runs="${1:-10}"
[ $# -gt 0 ] && shift
case "$runs" in '' | *[!0-9]*) echo "usage: $0 [N] [pytest arguments...]" >&2; exit 2 ;; esac

source_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${REPEAT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/replaygate-repeat.XXXXXX")}"
clone="$work/clone"
mkdir -p "$work"
rm -rf "$clone"
git clone --quiet --no-hardlinks "$source_repo" "$clone" || exit 2
git -C "$clone" checkout --quiet "$(git -C "$source_repo" rev-parse HEAD)" || exit 2
(cd "$clone" && deploy/bootstrap.sh project) || { echo "repeat: set-up of the clone failed" >&2; exit 2; }

passed=0
failed=0
for ((run = 1; run <= runs; run++)); do
  git -C "$clone" clean -fdxq -e .venv
  log="$work/run-$run.log"
  started=$SECONDS
  if (cd "$clone" && .venv/bin/python -m pytest -p no:cacheprovider -q "$@") >"$log" 2>&1; then
    passed=$((passed + 1))
    verdict=pass
  else
    failed=$((failed + 1))
    verdict=FAIL
  fi
  echo "run $run/$runs: $verdict in $((SECONDS - started))s: $(tail -n 1 "$log")"
  if [ "$verdict" = FAIL ]; then
    grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
  fi
done
echo "repeat: $passed passed, $failed failed of $runs runs at $(git -C "$clone" rev-parse --short HEAD) (logs in $work)"
[ "$failed" -eq 0 ]
