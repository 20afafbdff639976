#!/usr/bin/env bash
# Chromium for the console's browser tests (tests/integration/test_console.py), from Debian's
# packages: Playwright drives it through executable_path, so `playwright install` (which downloads
# browsers) is never needed. Idempotent: does nothing when the browser is already there.
#
#   deploy/install-browser.sh          (SD_CHROMIUM: the browser binary, default /usr/bin/chromium)
set -euo pipefail

CHROMIUM=${SD_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-browser: no $CHROMIUM and no apt-get; install Chromium and set SD_CHROMIUM to its path" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-browser: installing Debian's chromium" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
[ -x "$CHROMIUM" ] || { echo "install-browser: chromium installed but $CHROMIUM is missing; set SD_CHROMIUM" >&2; exit 1; }
