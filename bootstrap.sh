#!/usr/bin/env bash
# Prepares a fresh Debian machine to build, run and test maltrail-engine: the system packages the
# build and the tests need, a virtualenv in .venv, and the package itself installed into it (not
# editable, so the tests exercise the built C extension). Safe to run again. Says what it does, one
# line per step, before the step runs (the slow ones take a minute on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")"

STEPS=5
step=0
say() { step=$((step + 1)); printf 'bootstrap [%d/%d] %s\n' "$step" "$STEPS" "$*"; }
trap 'printf "bootstrap: step %d failed (its output is above)\n" "$step" >&2' ERR

# rsyslog and its TLS driver: the syslog collector the forwarding tests run (tests/test_forward_*.py);
# tinyproxy: the proxy in front of the feed tests' local feed server (tests/test_feeds_fetch.py);
# clickhouse-server (and its separate client): the server's scale-out store, which the store tests
# start on loopback (tests/clickhouse.py). Debian ships 18.16: keep its SQL to what that supports.
# chromium: the browser the UI tests drive through Playwright (tests/browser.py); Playwright's own
# browser download (`playwright install`) is never used.
APT_PACKAGES=(libpcap-dev gcc python3-dev python3-venv zstd iproute2 tcpdump systemd strace rsyslog rsyslog-openssl prometheus tinyproxy
              clickhouse-server clickhouse-client chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "system packages: installing ${missing[*]} with apt-get"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The feed tests start their own tinyproxy on loopback; Debian's package also enables a
    # system-wide one, which nothing here needs.
    if [[ " ${missing[*]} " == *" tinyproxy "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now tinyproxy >/dev/null 2>&1 || true
    fi
    # Likewise the store tests start their own ClickHouse on loopback ports; the system service
    # Debian enables would hold 8123/9000 and a data directory nothing here uses.
    if [[ " ${missing[*]} " == *" clickhouse-server "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
    fi
else
    say "system packages: all present (${APT_PACKAGES[*]})"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    say "virtualenv: creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv .venv
else
    say "virtualenv: .venv is there ($(.venv/bin/python -c 'import sys; print("Python", sys.version.split()[0])'))"
fi
say "pip: bringing .venv's pip up to date"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
say "maltrail-engine: building its C extensions and installing it with its test dependencies into .venv"
.venv/bin/python -m pip install -q ".[test]"
# The C extensions are also built in place: `python -m bench ...` runs from the checkout, where the
# source packages come first on sys.path and need their extension modules beside them.
say "C extensions: building them in the checkout too, for python -m bench"
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
printf 'bootstrap: ready: .venv/bin/maltrail-engine demo, .venv/bin/pytest -q\n'
