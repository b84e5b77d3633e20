"""The server's HTTP listening sockets, bound before the privilege drop, and the limits on slow
clients.

Owns `http_sockets(address, port)`: the TCP sockets for [server] http_address (every address a
host name resolves to, as asyncio's own create_server would), bound and listening while the
process may still be root (port 443 needs CAP_NET_BIND_SERVICE, which the server then drops);
aiohttp serves them through SockSite. And the slow-client limits (slowloris: a client that opens
connections and sends its request a byte at a time, to hold them all):

- `header_timeout_s`: a connection must deliver a request's complete headers within this long of
  being opened (or of its previous response): aiohttp's keep-alive timer, which also runs while
  headers are still arriving, closes it otherwise; so it is also the idle keep-alive limit.
- `body_timeout_s` (the `body_deadline` middleware): once the headers are in, the body (when
  there is one) must be complete within this long, or the connection is closed and the refusal
  counted ("slow body"). A request without a body (every GET, a long-lived event stream) is
  never cut.
Refusals are counted in `SlowClients.refusals` for /metrics. Must not know routes, users or the store.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

__all__ = ["http_sockets", "SlowClients", "LISTEN_BACKLOG"]

LISTEN_BACKLOG = 128


def http_sockets(address: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking TCP sockets for address:port. OSError when one cannot be bound."""
    host = address.strip("[]")
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE)
    out: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _name, addr in infos:
            if (family, addr[:2]) in seen:
                continue
            seen.add((family, addr[:2]))
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" means IPv6 only here, as an explicit address should; a name resolving to both
                # families gets a socket for each.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


class SlowClients:
    """The slow-client limits of the module docstring for one aiohttp application."""

    def __init__(self, header_timeout_s: float, body_timeout_s: float):
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.refusals: dict[str, int] = {}

    def runner_kwargs(self) -> dict:
        """For web.AppRunner: aiohttp's keep-alive timer is the header deadline."""
        return {"keepalive_timeout": self.header_timeout_s}

    def _cut(self, request: web.Request) -> None:
        if request.content.is_eof():
            return
        self.refusals["slow body"] = self.refusals.get("slow body", 0) + 1
        if request.transport is not None:
            request.transport.abort()

    @web.middleware
    async def body_deadline(self, request: web.Request, handler):
        if not request.body_exists:
            return await handler(request)
        handle = asyncio.get_running_loop().call_later(self.body_timeout_s, self._cut, request)
        try:
            return await handler(request)
        finally:
            handle.cancel()
