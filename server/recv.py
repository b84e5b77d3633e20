"""Many datagrams per system call: Linux recvmmsg(2) through ctypes, for the UDP intake's loop.

Owns `Receiver`: `receive()` returns the datagrams waiting on a non-blocking UDP socket, up to
`batch` of them, from one recvmmsg call, or from recv() calls where recvmmsg cannot be had. Must
not parse or count anything but what it received and what it had to cut.

Why: Python's socket.recv releases and retakes the GIL on every call, so a receive loop that
competes with a busy parse or store thread waits for the GIL once per datagram (a convoy) and
falls behind the kernel's buffer. recvmmsg is called through ctypes.PyDLL, which keeps the GIL:
the socket is non-blocking, so the call never waits, and one call fetches up to `batch`
datagrams.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket

MSG_TRUNC = 0x20
MAX_DATAGRAM_BYTES = 65536


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _recvmmsg():
    try:
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class Receiver:
    """Receives from one non-blocking UDP socket; `truncated` counts datagrams longer than
    MAX_DATAGRAM_BYTES (cut by the kernel; the intake refuses them)."""

    def __init__(self, sock: socket.socket, batch: int = 256):
        self.sock = sock
        self.batch = batch
        self.truncated = 0
        self._fn = _recvmmsg()
        self.mode = "recvmmsg" if self._fn is not None else "recv"
        if self._fn is not None:
            self._buf = ctypes.create_string_buffer(batch * MAX_DATAGRAM_BYTES)
            self._view = memoryview(self._buf).cast("B")
            self._iov = (_IoVec * batch)()
            self._msgs = (_MMsgHdr * batch)()
            base = ctypes.addressof(self._buf)
            for i in range(batch):
                self._iov[i].iov_base = base + i * MAX_DATAGRAM_BYTES
                self._iov[i].iov_len = MAX_DATAGRAM_BYTES
                self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
                self._msgs[i].msg_hdr.msg_iovlen = 1

    def receive(self) -> list[bytes]:
        """The datagrams waiting now (at most `batch`); [] when none. OSError for socket errors."""
        if self._fn is None:
            out = []
            try:
                while len(out) < self.batch:
                    out.append(self.sock.recv(MAX_DATAGRAM_BYTES))
            except (BlockingIOError, InterruptedError):
                pass
            return out
        n = self._fn(self.sock.fileno(), self._msgs, self.batch, 0, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(err, os.strerror(err))
        view, msgs, out = self._view, self._msgs, []
        for i in range(n):
            m = msgs[i]
            if m.msg_hdr.msg_flags & MSG_TRUNC:
                self.truncated += 1
                m.msg_hdr.msg_flags = 0
                continue
            start = i * MAX_DATAGRAM_BYTES
            out.append(view[start:start + m.msg_len].tobytes())
        return out
