"""A file that cannot be read past a given byte, served by a real FUSE filesystem (a disk with a
bad sector, as the kernel reports it: read(2) returns the bytes before it, then fails with EIO).

The filesystem is a separate process speaking the kernel's FUSE protocol on /dev/fuse (layouts
from linux/fuse.h), so a reader in the test process or in any child reads it through the real
VFS: open(2), stat(2) and read(2) as on any file, libpcap's stdio included. The file is opened
with FOPEN_DIRECT_IO so every read(2) reaches the server and the page cache cannot round the
failing offset to a page. Needs root and /dev/fuse; `failing_file` skips with a reason otherwise.

Run as a script by the fixture: `python fusefile.py MOUNTPOINT NAME DATA_PATH FAIL_AT_BYTES`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

# opcodes (linux/fuse.h)
_LOOKUP, _FORGET, _GETATTR, _OPEN, _READ, _RELEASE, _FLUSH, _INIT = 1, 2, 3, 14, 15, 18, 25, 26
_DESTROY, _INTERRUPT, _BATCH_FORGET = 38, 36, 42
_NO_REPLY = (_FORGET, _BATCH_FORGET, _INTERRUPT)

_IN_HEADER = struct.Struct("<IIQQIIIHH")          # len, opcode, unique, nodeid, uid, gid, pid, ext, pad
_OUT_HEADER = struct.Struct("<IiQ")                # len, error (negative errno), unique
_INIT_IN = struct.Struct("<IIII")                  # major, minor, max_readahead, flags
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")        # 64 bytes; the trailing words are unused
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")         # ino, size, blocks, times, modes, ids, blksize, flags
_READ_IN = struct.Struct("<QQII")                  # fh, offset, size, read_flags (then unused fields)
_FOPEN_DIRECT_IO = 1
_ROOT, _FILE = 1, 2
_BUFFER_BYTES = (1 << 20) + 4096                   # the kernel wants at least max_write + headers

MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


def _attr(nodeid: int, size: int) -> bytes:
    mode = 0o40755 if nodeid == _ROOT else 0o100444
    return _ATTR.pack(nodeid, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


def serve(fd: int, name: bytes, data: bytes, fail_at_bytes: int) -> None:
    """Answer the kernel until the filesystem is unmounted (the read fails with ENODEV)."""
    size = len(data)
    while True:
        try:
            request = os.read(fd, _BUFFER_BYTES)
        except OSError as exc:
            if exc.errno == errno.ENOENT:     # an interrupted request: the kernel wants the next
                continue
            return                            # ENODEV: unmounted
        _len, opcode, unique, nodeid, *_rest = _IN_HEADER.unpack_from(request)
        body = request[_IN_HEADER.size:]
        if opcode in _NO_REPLY:
            continue
        error, payload = 0, b""
        if opcode == _INIT:
            major, minor, _readahead, _flags = _INIT_IN.unpack_from(body)
            payload = _INIT_OUT.pack(7, min(minor, 31), 0, 0, 1, 1, 1 << 20, 1, 0, 0, 0, *([0] * 7))
        elif opcode == _LOOKUP:
            if nodeid == _ROOT and body.rstrip(b"\0") == name:
                payload = struct.pack("<QQQQII", _FILE, 0, 0, 0, 0, 0) + _attr(_FILE, size)
            else:
                error = errno.ENOENT
        elif opcode == _GETATTR:
            payload = struct.pack("<QII", 0, 0, 0) + _attr(nodeid, size)
        elif opcode == _OPEN:
            payload = struct.pack("<QII", 0, _FOPEN_DIRECT_IO, 0)
        elif opcode == _READ:
            _fh, offset, want, _flags = _READ_IN.unpack_from(body)
            if offset >= fail_at_bytes and offset < size:
                error = errno.EIO
            else:
                # a short answer before the bad byte: read(2) returns what was there, as a disk does
                payload = data[offset:min(offset + want, fail_at_bytes, size)]
        elif opcode in (_FLUSH, _RELEASE, _DESTROY):
            pass
        else:
            error = errno.ENOSYS
        reply = _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), -error, unique) + payload
        try:
            os.write(fd, reply)
        except OSError:
            pass                               # the request was interrupted meanwhile
        if opcode == _DESTROY:
            return


def _main(argv) -> None:
    mountpoint, name, data_path, fail_at = argv
    data = Path(data_path).read_bytes()
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = b"fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other" % fd
    if libc.mount(b"mte-failing", os.fsencode(mountpoint), b"fuse.mte-failing", MS_NOSUID | MS_NODEV, options):
        sys.stdout.write("mount failed: %s\n" % os.strerror(ctypes.get_errno()))
        sys.stdout.flush()
        sys.exit(1)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    serve(fd, os.fsencode(name), data, int(fail_at))


class FailingFiles:
    """Makes FUSE-served files; each is unmounted when the fixture ends."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[tuple[Path, subprocess.Popen]] = []

    def __call__(self, name: str, data: bytes, fail_at_bytes: int) -> Path:
        """A path whose first `fail_at_bytes` bytes read as `data` does; reading on fails (EIO)."""
        mountpoint = self.root / ("mnt%d" % len(self.mounts))
        mountpoint.mkdir()
        source = self.root / ("data%d" % len(self.mounts))
        source.write_bytes(data)
        server = subprocess.Popen([sys.executable, __file__, str(mountpoint), name, str(source), str(fail_at_bytes)],
                                  stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline().strip()
        if line != "ready":
            server.wait(10)
            pytest.skip("cannot mount a FUSE filesystem here (%s)" % (line or "the server exited"))
        self.mounts.append((mountpoint, server))
        return mountpoint / name

    def close(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for mountpoint, server in self.mounts:
            libc.umount2(os.fsencode(mountpoint), MNT_DETACH)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            server.stdout.close()
        self.mounts = []


@pytest.fixture
def failing_file(tmp_path):
    """failing_file(name, data, fail_at_bytes) -> a path on a FUSE mount; see FailingFiles."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounting a FUSE filesystem)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (a FUSE filesystem serves the failing file)")
    files = FailingFiles(tmp_path / "fuse")
    files.root.mkdir()
    try:
        yield files
    finally:
        files.close()


if __name__ == "__main__":
    _main(sys.argv[1:])
