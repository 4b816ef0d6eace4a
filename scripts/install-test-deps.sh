#!/usr/bin/env bash
# Installs everything the test suite needs: the Debian packages of the real peers the tests
# talk to (Redis, ngircd, PHP Thrift, the Thrift compiler, Chromium, Jabber clients: go-sendxmpp,
# and profanity, mcabber and poezio, which tests drive in tmux), the Python package with its
# test extras, and converse.js (npm) for the web client test, into build/web-clients.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(redis-server ngircd php-cli php-thrift thrift-compiler chromium chromium-driver go-sendxmpp
      profanity mcabber poezio tmux)
# npm for converse.js, unless the machine already has one (not always Debian's).
command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The packaged daemons are started by their own tests on private ports; the system-wide
  # instances are not needed.
  for svc in redis-server ngircd; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

python3 -m pip install -q '.[test]'

# converse.js, served to headless Chromium by tests/test_web_converse.py (a project-local
# install: nothing global).
CONVERSE_VERSION=14.0.0
if [ ! -f build/web-clients/node_modules/converse.js/dist/converse.min.js ] || \
   ! grep -q "\"version\": \"$CONVERSE_VERSION\"" build/web-clients/node_modules/converse.js/package.json; then
  npm install --no-audit --no-fund --silent --prefix build/web-clients "converse.js@$CONVERSE_VERSION"
fi
