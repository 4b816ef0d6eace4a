#!/usr/bin/env bash
# Installs the peer servers bench/peers.py measures presenced against (Debian's prosody and
# ejabberd), and nginx with the Nchan module for comet comparisons. The packages' own system
# services are kept from starting (policy-rc.d) and stopped if they did start: every bench
# runs private instances on free loopback ports with their own config and data directories.
set -euo pipefail

debs=(prosody ejabberd nginx libnginx-mod-nchan)
services=(prosody ejabberd nginx)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [ -e "$policy" ]; then
    saved=$(mktemp)
    $SUDO cp -p "$policy" "$saved"
  fi
  # 101: "action not allowed": the maintainer scripts install but do not start the daemons.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  restore() {
    if [ -n "$saved" ]; then $SUDO mv "$saved" "$policy"; else $SUDO rm -f "$policy"; fi
  }
  trap restore EXIT
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi
for svc in "${services[@]}"; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
# ejabberd's maintainer scripts start Erlang's port mapper as a daemon; bench/peers.py runs
# ejabberd without distribution and needs none. "epmd -kill" asks it to stop (it refuses
# while a node is registered with it).
if command -v epmd >/dev/null; then
  epmd -kill >/dev/null 2>&1 || true
fi
echo "peers installed: $(command -v prosody) $(command -v ejabberdctl) $(command -v nginx)"
