#!/usr/bin/env bash
# System packages the test suite needs beyond the venv (`make install` installs the Python side):
# Prometheus and promtool for tests/deploy (Debian's `prometheus` package). CI runs this as root
# before `make test`; elsewhere it uses sudo when it is there. Idempotent: skips what is present.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
prometheus --version 2>&1 | head -n 1
