#!/usr/bin/env bash
# Headless browser for tests/test_space.py: Debian chromium + chromium-driver (Playwright drives
# /usr/bin/chromium through executable_path; no `playwright install` download).
# Idempotent: returns at once when both are already installed.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "setup_browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "setup_browser: need root or sudo to apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
echo "setup_browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
