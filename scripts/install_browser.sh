#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's browser test (tests/test_dashboard.py drives it
# with playwright, from the dev extra; playwright's own browser download is not used). Does
# nothing when a chromium is already there; needs root and apt-get otherwise.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x "${SWITCHLLM_CHROMIUM:-/nonexistent}" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "no chromium: install it (Debian: apt-get install chromium) or set SWITCHLLM_CHROMIUM" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed $(chromium --version 2>/dev/null)"
