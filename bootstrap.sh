#!/usr/bin/env bash
# Prepares a fresh Debian machine to build, run and test maltrail-engine: the system packages the
# build and the tests need, a virtualenv in .venv, and the package itself installed into it (not
# editable, so the tests exercise the built C extension). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(libpcap-dev gcc python3-dev python3-venv zstd iproute2 tcpdump systemd strace)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q ".[test]"
# The C extensions are also built in place: `python -m bench ...` runs from the checkout, where the
# source packages come first on sys.path and need their extension modules beside them.
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
