"""Message channels between the engine's processes: SOCK_SEQPACKET socket pairs carrying msgpack.

Owns the framing of everything but frames (frames go through engine/ring.py): events from workers
to the log writer, statistics and acknowledgements to the supervisor, commands from it. A
seqpacket socket keeps message boundaries and sends a message whole or not at all, so a process
killed in the middle of a send never leaves half a message for the reader; a channel survives a
restarted worker (the supervisor keeps its end and the new process inherits it). Messages are
lists whose first item names the kind.

Must not know what the messages mean.
"""

from __future__ import annotations

import socket

import msgpack

MAX_MESSAGE_BYTES = 128 * 1024  # below the default socket buffer, so one message always fits


def channel() -> tuple[socket.socket, socket.socket]:
    """A connected pair of seqpacket sockets (both ends blocking)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message) -> None:
    """Sends one message; raises OSError when the other side is gone."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message of %d bytes is over the channel limit" % len(data))
    sock.send(data)


def send_records(sock: socket.socket, kind: str, sender: int, records: list) -> None:
    """Sends [kind, sender, records] in as many messages as the size limit needs."""
    chunk: list = []
    size = 0
    for record in records:
        packed = len(msgpack.packb(record, use_bin_type=True))
        if chunk and size + packed > MAX_MESSAGE_BYTES - 256:
            send(sock, [kind, sender, chunk])
            chunk, size = [], 0
        chunk.append(record)
        size += packed
    if chunk:
        send(sock, [kind, sender, chunk])


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
