#!/usr/bin/env bash
# Debian's Chromium for the docs' browser check (docs/browser_check.py), when none is on the
# PATH. nox -s docs runs this; CI therefore installs it itself.
set -euo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null; then exit 0; fi
done
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
