#!/usr/bin/env bash
# Install Debian's chromium for the browser tests when it is missing.
# Always exits 0: without a browser those tests skip and say why.
set -u

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "chromium.sh: not root and no password-less sudo; browser tests will skip" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no apt-get on this machine; browser tests will skip" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >/dev/null 2>&1 \
        || ! $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
    echo "chromium.sh: could not install chromium; browser tests will skip" >&2
fi
exit 0
