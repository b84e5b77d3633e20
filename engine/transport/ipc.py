"""Message channels between the engine's processes: SOCK_SEQPACKET socket pairs carrying msgpack.

Owns the framing of everything but frames (frames go through engine/transport/ring.py): events from workers
to the log writer, statistics and acknowledgements to the supervisor, commands from it. A
seqpacket socket keeps message boundaries and sends a message whole or not at all, so a process
killed in the middle of a send never leaves half a message for the reader; a channel survives a
restarted worker (the supervisor keeps its end and the new process inherits it). Messages are
lists whose first item names the kind. A message may carry open file descriptors (SCM_RIGHTS):
the receiver gets its own descriptors for the same open files (the supervisor hands workers a new
trail copy this way); a receiver that does not ask for them never holds them (the kernel closes
descriptors it could not deliver).

Must not know what the messages mean.
"""

from __future__ import annotations

import array
import os
import socket

import msgpack

# One message must fit in the socket buffer; an event is bounded by the frame it came from
# (snaplen_bytes, at most 256 KiB), so 1 MiB messages in 4 MiB buffers always fit one.
MAX_MESSAGE_BYTES = 1 << 20
SOCKET_BUFFER_BYTES = 4 << 20
_FD_BYTES = array.array("i").itemsize


def channel() -> tuple[socket.socket, socket.socket]:
    """A connected pair of seqpacket sockets (both ends blocking)."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in pair:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
    return pair


def send(sock: socket.socket, message) -> None:
    """Sends one message; raises OSError when the other side is gone."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message of %d bytes is over the channel limit" % len(data))
    sock.send(data)


def send_fds(sock: socket.socket, message, fds: list[int]) -> None:
    """Sends one message with open file descriptors attached; raises OSError when the other side
    is gone."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message of %d bytes is over the channel limit" % len(data))
    socket.send_fds(sock, [data], fds)


def send_records(sock: socket.socket, kind: str, sender: int, records: list) -> None:
    """Sends [kind, sender, records], split into as many messages as the size limit needs."""
    if not records:
        return
    data = msgpack.packb([kind, sender, records], use_bin_type=True)
    if len(data) <= MAX_MESSAGE_BYTES:
        sock.send(data)
    elif len(records) == 1:
        raise ValueError("one record of %d bytes is over the channel limit" % len(data))
    else:
        half = len(records) // 2
        send_records(sock, kind, sender, records[:half])
        send_records(sock, kind, sender, records[half:])


def receive(sock: socket.socket):
    """One message, or None when the other side has closed. Blocks unless the socket doesn't."""
    data = sock.recv(MAX_MESSAGE_BYTES + 1)
    if not data:
        return None
    return msgpack.unpackb(data, raw=False)


def receive_ready(sock: socket.socket) -> list:
    """Every message already waiting on a socket, without blocking; [None] at end of stream."""
    out = []
    while True:
        try:
            data = sock.recv(MAX_MESSAGE_BYTES + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        if not data:
            out.append(None)
            return out
        out.append(msgpack.unpackb(data, raw=False))


def receive_ready_fds(sock: socket.socket, max_fds: int = 4) -> list:
    """Like receive_ready, for a channel whose messages may carry descriptors: [(message, fds)],
    (None, []) at end of stream. The descriptors are the caller's to close (close-on-exec)."""
    out = []
    while True:
        try:
            # recvmsg, not socket.recv_fds: before Python 3.12 recv_fds drops its flags argument
            # (and would block here).
            data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE_BYTES + 1, socket.CMSG_SPACE(max_fds * _FD_BYTES),
                                                 socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return out
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % _FD_BYTES])
        fds = list(fds)
        if not data:
            for fd in fds:
                os.close(fd)
            out.append((None, []))
            return out
        try:
            message = msgpack.unpackb(data, raw=False)
        except Exception:
            for fd in fds:
                os.close(fd)
            raise
        out.append((message, fds))
