#!/usr/bin/env bash
# System packages the test suite needs beyond the venv (`make install` installs the Python side):
# Prometheus and promtool for tests/deploy (Debian's `prometheus` package), and Chromium with its
# WebDriver for the playground's browser tests in tests/ui (`chromium`, `chromium-driver`:
# /usr/bin/chromium, /usr/bin/chromedriver). CI runs this as root before `make test`; elsewhere
# it uses sudo when it is there. Idempotent: installs only what is missing.
set -euo pipefail
missing=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ ! -x /usr/bin/chromedriver ]; then missing+=(chromium-driver); fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
prometheus --version 2>&1 | head -n 1
/usr/bin/chromium --version
/usr/bin/chromedriver --version
