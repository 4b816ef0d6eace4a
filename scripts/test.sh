#!/usr/bin/env bash
# The test command: installs what the tests need (Debian peers + Python extras), then runs
# the whole suite. Extra arguments go to pytest (e.g. scripts/test.sh -k store).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
set +e
python3 -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
