#!/usr/bin/env bash
# Debian packages the test suite needs: chromium (dashboard browser test), sox (recording checks),
# nginx (the shipped proxying rules in front of two bridges), prometheus (promtool: alert rules) and
# redis-server (a local Redis Cluster). Installs only what is missing; needs root (or passwordless
# sudo) the first time. The tests start their own nginx/redis-server processes on free ports, so the
# packages' system services are not started here.
set -euo pipefail
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
need=()
has chromium || need+=(chromium)
has sox || need+=(sox)
has nginx || need+=(nginx)
has promtool || need+=(prometheus)
{ has redis-server && has redis-cli; } || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# https://manpages.debian.org/invoke-rc.d: exit code 101 from policy-rc.d keeps services from starting.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
