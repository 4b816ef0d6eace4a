#!/usr/bin/env bash
# The longer fuzz job (optional, not part of CI's suite): the tests marked `fuzz` with
# SCALE times their rounds and a fresh seed, printed so a failure can be replayed with
# PRESENCED_FUZZ_SEED=<seed> scripts/fuzz.sh. Usage: scripts/fuzz.sh [SCALE] [pytest args]
# (SCALE 50, a few minutes on a quiet 2-core machine, is the default).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-50}"
shift $(( $# > 0 ? 1 : 0 ))
seed="${PRESENCED_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "fuzz: scale $scale, seed $seed"
PRESENCED_FUZZ_SCALE="$scale" PRESENCED_FUZZ_SEED="$seed" \
  exec python3 -m pytest -p no:cacheprovider -q -m fuzz --timeout $(( 300 * scale )) "$@"
