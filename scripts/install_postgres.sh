#!/usr/bin/env bash
# Install Debian's `postgresql` package when its binaries are missing: the Postgres decision-log
# tests start a throw-away server from /usr/lib/postgresql/*/bin (tests/postgres_fixture.py).
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends postgresql
