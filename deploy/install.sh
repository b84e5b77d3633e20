#!/usr/bin/env bash
# Installs maltrail-engine system-wide from this checkout, the one documented way (README.md,
# "Install as a service"):
#   - a virtualenv at /opt/maltrail-engine built with the system's Python (owned by root, writable
#     by root only: the supervisor runs this code as root),
#   - /usr/local/bin/maltrail-engine pointing into it, so `maltrail-engine` and `sudo
#     maltrail-engine` find it,
#   - the system account `maltrail-engine` the sensor's processes run as (no login, no home),
#   - the default configuration at /etc/maltrail-engine/maltrail.toml (an existing one is kept),
#   - /var/lib/maltrail-engine (trail artifact: written by root, read by the sensor) and
#     /var/log/maltrail-engine (event log: written by the sensor's account),
#   - the systemd unit maltrail-engine.service (installed, not enabled: trails and an interface
#     come first).
# Running it again upgrades the venv and the unit, re-applies owners and modes, and keeps the
# configuration and the account.
#
# --destdir DIR installs into a staging root instead of / (DIR/etc/passwd and DIR/etc/group must
# exist: the account is created in them); nothing outside DIR is touched then, and systemd is not
# told. Owns only the paths listed above; must not enable, start or stop the sensor (an upgrade
# restarts it if it was running, so it does not run on a venv swapped under its feet), and must
# not change a file it did not create except the unit file and the venv it replaces.
set -euo pipefail
umask 022

ACCOUNT=maltrail-engine
VENV=/opt/maltrail-engine
BIN_LINK=/usr/local/bin/maltrail-engine
CONF_DIR=/etc/maltrail-engine
CONF=$CONF_DIR/maltrail.toml
STATE_DIR=/var/lib/maltrail-engine
LOG_DIR=/var/log/maltrail-engine
UNIT=/etc/systemd/system/maltrail-engine.service

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PYTHON=/usr/bin/python3

usage() {
    cat <<EOF
usage: deploy/install.sh [--destdir DIR] [--python PYTHON]

Installs maltrail-engine from this checkout: a venv at $VENV, $BIN_LINK, the account
$ACCOUNT, $CONF (kept if present), $STATE_DIR, $LOG_DIR and the unit $UNIT.

  --destdir DIR    install into the staging root DIR instead of / (also: DESTDIR=DIR)
  --python PYTHON  the interpreter the venv is built on (default $PYTHON); it must be
                   reachable by the $ACCOUNT account, so not one under /root
EOF
}

say() { echo "[install] $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) [ $# -ge 2 ] || { usage >&2; exit 2; }; DESTDIR=$2; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || { usage >&2; exit 2; }; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root: it creates a system account and files owned by root and by that account"

if [ -n "$DESTDIR" ]; then
    case "$DESTDIR" in /*) ;; *) die "--destdir must be an absolute path, got '$DESTDIR'" ;; esac
    DESTDIR=$(realpath -m "$DESTDIR")
    [ "$DESTDIR" = / ] && DESTDIR=""
fi
if [ -n "$DESTDIR" ]; then
    for f in etc/passwd etc/group; do
        [ -f "$DESTDIR/$f" ] || die "the staging root $DESTDIR has no $f (the account is created in it); seed it first"
    done
fi

# --- what the build needs -----------------------------------------------------------------------

# Every directory on the way to `path` must be searchable by others and the file readable (and,
# with `x`, executable) by others: the sensor's account runs this interpreter and reads its
# standard library. A Python under /root (pyenv's default) fails here, not at the first start.
reachable_by_others() {  # path, "r" or "rx"
    local path want=$2 dir mode
    path=$(realpath -e "$1") || return 1
    mode=$(stat -c %a "$path")
    (( 8#$mode & 4 )) || return 1
    if [ "$want" = rx ]; then (( 8#$mode & 1 )) || return 1; fi
    dir=$(dirname "$path")
    while :; do
        mode=$(stat -c %a "$dir")
        (( 8#$mode & 1 )) || return 1
        [ "$dir" = / ] && return 0
        dir=$(dirname "$dir")
    done
}

missing=()
if [ ! -x "$PYTHON" ]; then
    die "no Python at $PYTHON (install python3, or pass --python)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11, which maltrail-engine needs"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
STDLIB=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
reachable_by_others "$PYTHON" rx && reachable_by_others "$STDLIB/os.py" r \
    || die "$PYTHON (or its standard library $STDLIB) is not reachable by other accounts, so the $ACCOUNT account could not run it; pass --python /usr/bin/python3"
[ -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ] || missing+=(python3-dev)
CC_CMD=$(command -v cc || command -v gcc || true)
if [ -z "$CC_CMD" ]; then
    missing+=(gcc)
elif ! printf '#include <pcap.h>\n' | "$CC_CMD" -E -x c - >/dev/null 2>&1; then
    missing+=(libpcap-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
    die "the build needs: ${missing[*]} (Debian: apt-get install ${missing[*]})"
fi

# --- the account ------------------------------------------------------------------------------

# `getent` on the live system (the account may come from NSS); the staging root's own files
# otherwise, so the host's accounts never leak into a staged image.
lookup() {  # passwd|group, name -> the entry's third field (uid or gid), empty when absent
    if [ -n "$DESTDIR" ]; then
        awk -F: -v name="$2" '$1 == name { print $3; exit }' "$DESTDIR/etc/$1"
    else
        getent "$1" "$2" | cut -d: -f3 || true
    fi
}

uid=$(lookup passwd "$ACCOUNT")
if [ -z "$uid" ]; then
    # A system account: no password, no home (/nonexistent, Debian's convention), no shell.
    group_args=(--user-group)
    [ -n "$(lookup group "$ACCOUNT")" ] && group_args=(--gid "$ACCOUNT")
    useradd ${DESTDIR:+--prefix "$DESTDIR"} --system "${group_args[@]}" --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin --comment "maltrail-engine sensor" "$ACCOUNT" \
        || die "could not create the account $ACCOUNT"
    uid=$(lookup passwd "$ACCOUNT")
    say "created the system account $ACCOUNT (uid $uid)"
else
    say "using the existing account $ACCOUNT (uid $uid)"
fi
gid=$(lookup group "$ACCOUNT")
[ -n "$gid" ] || die "the account $ACCOUNT exists but the group $ACCOUNT does not; create it (groupadd --system $ACCOUNT)"
[ "$uid" != 0 ] && [ "$gid" != 0 ] || die "the account $ACCOUNT has uid or gid 0; it must be unprivileged"

# --- directories --------------------------------------------------------------------------------

# A directory with an exact owner and mode. An existing symlink or non-directory is refused
# rather than followed: chown/chmod through a link would hand someone else's target to the account.
make_dir() {  # path, uid, gid, mode
    local target="$DESTDIR$1"
    if [ -L "$target" ]; then
        die "$1 is a symlink (to $(readlink "$target")); refusing to change owners through it: make it a real directory"
    fi
    if [ -e "$target" ] && [ ! -d "$target" ]; then
        die "$1 exists and is not a directory"
    fi
    mkdir -p "$target"
    chown -h "$2:$3" "$target"
    chmod "$4" "$target"
}

# The configuration and the trail artifact are root's (the account only reads them: a worker that
# parses hostile packets must not be able to rewrite what it detects); setgid, so files root
# creates there (trails build, control files) take the group and stay readable by the sensor
# whatever root's umask. The log directory is the account's: its log writer creates the day files.
make_dir "$CONF_DIR" 0 "$gid" 2750
make_dir "$STATE_DIR" 0 "$gid" 2750
make_dir "$LOG_DIR" "$uid" "$gid" 0750
say "directories: $CONF_DIR and $STATE_DIR (root:$ACCOUNT 2750), $LOG_DIR ($ACCOUNT:$ACCOUNT 0750)"

final="$DESTDIR$VENV"
if [ -L "$final" ] || { [ -e "$final" ] && [ ! -f "$final/pyvenv.cfg" ]; }; then
    die "$VENV exists and is not a maltrail-engine venv; move it away first"
fi
for path in "$BIN_LINK" "$UNIT" "$CONF"; do
    if [ -e "$DESTDIR$path" ] && [ -d "$DESTDIR$path" ]; then
        die "$path is a directory"
    fi
done
if [ -e "$DESTDIR$BIN_LINK" ] && [ ! -L "$DESTDIR$BIN_LINK" ]; then
    die "$BIN_LINK exists and is not a link into $VENV; move it away first"
fi

# --- the venv -----------------------------------------------------------------------------------

# Built beside the old one and swapped in only once complete, so a failed build leaves the
# installed sensor as it was. Nothing comes from pip's cache: a wheel built there by another
# interpreter carries that interpreter's library paths (a RUNPATH under /root, say). pip builds
# in the source tree: a private copy keeps root-owned build output out of the user's checkout.
work=$(mktemp -d)
build="$DESTDIR/opt/.maltrail-engine.new"
old="$DESTDIR/opt/.maltrail-engine.old"
cleanup() { rm -rf "$work" "$build"; }
trap cleanup EXIT
rm -rf "$build" "$old"
mkdir -p "$work/src" "$DESTDIR/opt"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' --exclude=./demo-out \
    --exclude=.pytest_cache --exclude=.hypothesis -cf - . | tar -C "$work/src" -xf -

say "building the venv with $PYTHON (compiles the C extensions; a minute or so)"
"$PYTHON" -m venv "$build"
"$build/bin/python" -m pip install --quiet --no-compile --no-cache-dir --use-pep517 "$work/src" \
    || die "pip could not install maltrail-engine into the venv (its messages are above)"

# A venv records its own path in its scripts' #! lines, activate scripts and pyvenv.cfg; the
# build directory becomes $VENV, so those are rewritten, and the bytecode (which records source
# paths) is compiled with the final paths.
"$PYTHON" - "$build" "$VENV" <<'EOF'
import os, sys
build, final = sys.argv[1].encode(), sys.argv[2].encode()
for directory in (os.path.join(sys.argv[1], "bin"), sys.argv[1]):
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if build in data:
            with open(path, "wb") as f:
                f.write(data.replace(build, final))
EOF
"$build/bin/python" -m compileall -q -f -s "$build" -p "$VENV" "$build/lib" >/dev/null \
    || die "compiling the venv's bytecode failed"
if grep -rlF -- "$build" "$build" >/dev/null; then
    die "the venv still names its build directory: $(grep -rlF -- "$build" "$build" | head -3 | tr '\n' ' ')"
fi
chown -R -h 0:0 "$build"
chmod -R go-w "$build"
chmod 0755 "$build"

if [ -e "$final" ]; then
    mv "$final" "$old"
fi
mv "$build" "$final"
rm -rf "$old"
say "installed $("$final/bin/python" -c 'from importlib.metadata import version; print("maltrail-engine", version("maltrail-engine"))') in $VENV"

mkdir -p "$(dirname "$DESTDIR$BIN_LINK")"
ln -sfn "$VENV/bin/maltrail-engine" "$DESTDIR$BIN_LINK"
say "linked $BIN_LINK -> $VENV/bin/maltrail-engine"

# --- configuration and unit ---------------------------------------------------------------------

if [ -e "$DESTDIR$CONF" ] || [ -L "$DESTDIR$CONF" ]; then
    say "kept the existing $CONF (this version's default is $VENV/share/maltrail-engine/maltrail.toml)"
else
    install -m 0640 -o 0 -g "$gid" "$SRC/maltrail.toml" "$DESTDIR$CONF"
    say "installed the default configuration at $CONF (root:$ACCOUNT 0640)"
fi

mkdir -p "$(dirname "$DESTDIR$UNIT")"
rm -f "$DESTDIR$UNIT"
install -m 0644 -o 0 -g 0 "$SRC/deploy/maltrail-engine.service" "$DESTDIR$UNIT"
say "installed the unit $UNIT"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl try-restart maltrail-engine.service
fi

cat <<EOF
[install] done. Next:
  1. trails:     sudo maltrail-engine trails build --source /path/to/maltrail/trails.csv
  2. interface:  set [sensor] interface in $CONF, then: sudo maltrail-engine check-config
  3. start:      sudo systemctl enable --now maltrail-engine   (reload: systemctl reload maltrail-engine)
  Reading events needs membership of the $ACCOUNT group: sudo usermod -aG $ACCOUNT USER
EOF
