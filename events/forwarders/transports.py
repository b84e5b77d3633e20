"""How forwarded messages travel: UDP datagrams, and TCP or TLS streams that know what arrived.

Owns addresses (`Endpoint.parse`: `udp://host:port`, `tcp://`, `tls://`, or a bare `host:port`
as Maltrail writes it, meaning UDP; IPv6 as `[addr]:port`), name resolution at connect time (a
name that resolves to nothing is Unreachable and tried again, never fatal), and the two ways of
sending:

- `Datagram`: one sendto per message from one unconnected socket, never retried (Maltrail's
  LOG_SERVER and UDP syslog are fire-and-forget). Never blocks. What is known not to have
  arrived is counted: a datagram the kernel would not take (a full socket buffer, no route), and
  one the destination's host refused afterwards with an ICMP error (port unreachable: nothing
  listens there). The socket asks for those errors (IP_RECVERR), so each one is queued for us,
  not only the last: a collector that is down shows as every datagram dropped, not as silence.
- `Stream`: one TCP connection (TLS on top for `tls://`, the collector's certificate verified
  against the system store or `ca_file`, optionally presenting a client certificate; TLS 1.2,
  see tls_context for why not 1.3). Messages
  are framed by the caller (RFC 6587 octet counting for syslog, a newline for JSON lines) and
  sent in one write; a batch counts as accepted only once the peer's TCP has acknowledged every
  byte of it (the socket's send queue, SIOCOUTQ, is empty), so a collector that dies or is
  killed never silently swallows a batch: the batch is sent again on a new connection, and the
  failed one is reset (not closed), so what it still held is never delivered late. Before
  each batch the connection is checked for an orderly close or a reset by the peer (a killed
  collector's kernel closes its side), so the first batch after a collector's death goes to a
  fresh connection, not into a dead one. Connect, write and acknowledgement have timeouts.

Must not know what the messages say.
"""

from __future__ import annotations

# getaddrinfo() encodes host names with the idna codec, imported on first use: imported here, at
# start, so that a process that has since dropped its privileges (and may no longer read the
# interpreter's library directory) never has to.
import encodings.idna  # noqa: F401
import errno
import fcntl
import http.client
import ipaddress
import select
import socket
import ssl
import struct
import termios
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from events.forwarders.base import Unreachable

CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 10.0
SIOCOUTQ = termios.TIOCOUTQ          # linux: bytes in the send queue not yet acknowledged by the peer
SCHEMES = ("udp", "tcp", "tls")
# linux/in.h, linux/in6.h: queue every ICMP error of a datagram socket (the socket module lacks them).
IP_RECVERR = 11
IPV6_RECVERR = 25
# Errors a send reports for an EARLIER datagram (from an ICMP message), not for the one it sends.
_REPORTED = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                       errno.ENETDOWN, errno.EPROTO, errno.EMSGSIZE))


class Endpoint(NamedTuple):
    scheme: str          # "udp", "tcp" or "tls"
    host: str            # a name, or an address (IPv6 without brackets)
    port: int

    @classmethod
    def parse(cls, text: str, schemes=SCHEMES, default_scheme: str = "udp") -> "Endpoint":
        """Raises ValueError saying what is wrong and what is accepted."""
        raw = text.strip()
        if "://" not in raw:
            raw = "%s://%s" % (default_scheme, raw)
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise ValueError("%r: %s" % (text, exc)) from None
        if parts.scheme not in schemes:
            raise ValueError("%r: the scheme must be one of %s" % (text, ", ".join("%s://" % s for s in schemes)))
        if not parts.hostname:
            raise ValueError("%r: the host is missing" % text)
        if port is None or not 0 < port < 65536:
            raise ValueError("%r: a port from 1 to 65535 is needed (host:port)" % text)
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("%r: only scheme://host:port is allowed" % text)
        return cls(parts.scheme, parts.hostname, port)

    def __str__(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % (self.scheme, host, self.port)


def _resolve(endpoint: Endpoint, kind: int) -> list[tuple]:
    """(family, sockaddr) candidates; Unreachable when the name resolves to nothing."""
    try:
        ipaddress.ip_address(endpoint.host)
        flags = socket.AI_NUMERICHOST
    except ValueError:
        flags = 0
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, 0, kind, 0, flags)
    except socket.gaierror as exc:
        raise Unreachable("%s does not resolve: %s" % (endpoint.host, exc.strerror)) from None
    return [(family, addr) for family, _, _, _, addr in infos]


class Datagram:
    """Best-effort UDP (see the module doc)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._sock: socket.socket | None = None
        self._addr = None
        self.errors = 0        # datagrams the kernel would not take
        self.refused = 0       # datagrams sent that the destination's host refused (ICMP)

    def _open(self) -> None:
        family, addr = _resolve(self.endpoint, socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except OSError:
            pass                # then refusals go uncounted, as for any UDP sender
        self._sock, self._addr = sock, addr

    def _collect_refusals(self) -> int:
        """Takes the queued ICMP errors off the socket, counting them; how many there were."""
        found = 0
        while self._sock is not None:
            try:
                self._sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            found += 1
        self.refused += found
        return found

    def send(self, messages: list[bytes]) -> int:
        """Sends each message once; returns how many the kernel took. Refusals reported for
        datagrams already sent are added to `refused`."""
        if self._sock is None:
            self._open()
        taken = 0
        for message in messages:
            for attempt in (1, 2):
                try:
                    self._sock.sendto(message, self._addr)
                    taken += 1
                    break
                except (BlockingIOError, InterruptedError):
                    self.errors += 1        # the socket buffer is full: dropped, never waited for
                    break
                except OSError as exc:
                    # A pending ICMP error is reported by the next send, which then sends nothing:
                    # it was about an earlier datagram, so this one is tried once more.
                    if self._collect_refusals() and attempt == 1 and exc.errno in _REPORTED:
                        continue
                    self.errors += 1
                    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                        self.close()        # a route or an address gone: resolve again next time
                        self._open()
                    break
        self._collect_refusals()
        return taken

    def close(self) -> None:
        if self._sock is not None:
            self._collect_refusals()
            self._sock.close()
            self._sock = None


class Stream:
    """TCP or TLS with acknowledgement by the peer's TCP (see the module doc)."""

    def __init__(self, endpoint: Endpoint, tls: ssl.SSLContext | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, ack_timeout_s: float = ACK_TIMEOUT_S):
        self.endpoint = endpoint
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self._sock: socket.socket | None = None
        self.connects = 0
        self._interrupted = False

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def interrupt(self) -> None:
        """From another thread, when the sensor stops: a send waiting for the collector gives up
        now (Unreachable; the batch waits in the log), instead of after its timeouts."""
        self._interrupted = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)     # wakes a blocked write
            except OSError:
                pass

    def _connect(self) -> None:
        last = None
        for family, addr in _resolve(self.endpoint, socket.SOCK_STREAM):
            raw = socket.socket(family, socket.SOCK_STREAM)
            raw.settimeout(self.connect_timeout_s)
            try:
                raw.connect(addr)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = raw
                if self.tls is not None:
                    sock = self.tls.wrap_socket(raw, server_hostname=self.endpoint.host)
                sock.settimeout(SEND_TIMEOUT_S)
            except ssl.SSLCertVerificationError as exc:
                raw.close()
                last = "the collector's certificate is not trusted (%s)" % (exc.verify_message or exc.reason)
                continue
            except ssl.SSLError as exc:
                raw.close()
                last = "TLS handshake failed: %s" % (exc.reason or exc)
                continue
            except OSError as exc:
                raw.close()
                last = exc.strerror or str(exc)
                continue
            # Wrapping moved the descriptor into the TLS socket (`raw` is detached): every later
            # look at the connection (readable? bytes unacknowledged?) goes through `sock`.
            self._sock = sock
            self.connects += 1
            return
        raise Unreachable("%s: %s" % (self.endpoint, last or "no address"))

    def _peer_closed(self) -> bool:
        """Whether the peer closed or reset the connection (a collector never sends us data)."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        if self.tls is None:
            try:
                return not self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
        # TLS: what is readable may be the server's session tickets (TLS 1.3), which the TLS
        # layer takes in on a read; the end of the connection reads as b"" or an error.
        self._sock.setblocking(False)
        try:
            return not self._sock.recv(1024)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except (OSError, ssl.SSLError):
            return True
        finally:
            if self._sock is not None:
                self._sock.settimeout(SEND_TIMEOUT_S)

    def send(self, payload: bytes) -> None:
        """Writes `payload` and returns once the peer's TCP acknowledged all of it; Unreachable
        (and the connection reset) otherwise."""
        if self._interrupted:
            raise Unreachable("%s: the sensor is stopping" % self.endpoint)
        if self._sock is not None and self._peer_closed():
            self.close(abort=True)
        if self._sock is None:
            self._connect()
        try:
            self._sock.sendall(payload)
        except (OSError, ssl.SSLError) as exc:
            self.close(abort=True)
            raise Unreachable("%s: %s" % (self.endpoint, getattr(exc, "strerror", None) or exc)) from None
        deadline = time.monotonic() + self.ack_timeout_s
        wait_s = 0.0005
        while True:
            try:
                queued = struct.unpack("i", fcntl.ioctl(self._sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
            except OSError:
                queued = 0
            if queued == 0:
                return
            if self._interrupted or self._peer_closed() or time.monotonic() > deadline:
                self.close(abort=True)
                raise Unreachable("%s: %d bytes not acknowledged by the collector" % (self.endpoint, queued))
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 0.05)

    def close(self, abort: bool = False) -> None:
        """Closes the connection; `abort` (a delivery that failed) resets it instead, so that
        what the collector has not acknowledged is thrown away here, never delivered late
        beside the batch sent again on the next connection."""
        if self._sock is not None:
            try:
                if abort:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._sock.close()
            except OSError:
                pass
        self._sock = None


def tls_context(ca_file: str = "", client_cert: str = "", client_key: str = "",
                keys=("ca_file", "client_cert", "client_key")) -> ssl.SSLContext:
    """A client context that verifies the collector's certificate and name (the system's CAs,
    or `ca_file`), optionally presenting a client certificate. There is no switch to turn
    verification off. ValueError naming the setting (`keys`: what the operator calls the three)
    and the file when one cannot be used.

    TLS 1.2 exactly. In TLS 1.3 the client's handshake is over before the server has looked at
    the client's certificate: a collector that demands one and refuses ours (or gets none) does
    so after we have started sending, and its TCP may already have acknowledged the first batch,
    which would then count as delivered and be lost. In TLS 1.2 the refusal ends the handshake,
    before any event is sent: the destination is unreachable, said, and the events wait."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError("%s %r cannot be used: %s" % (keys[0], ca_file, _why(exc))) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        try:
            context.load_cert_chain(client_cert, client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError("%s %r%s cannot be used: %s" % (
                keys[1], client_cert, " with %s %r" % (keys[2], client_key) if client_key else "",
                _why(exc))) from None
    elif client_key:
        raise ValueError("%s is set without %s: the key belongs to a certificate" % (keys[2], keys[1]))
    return context


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


class HttpPoster:
    """POSTs to one http(s) URL over a kept-alive connection (webhooks, our server's intake).

    Each exchange has a total deadline (`total_timeout_s`: connect, send and the answer; a timer
    shuts the socket when it passes), a connection the peer closed while idle is retried once
    anew, and every failure becomes Unreachable with a sentence (no answer in time, a certificate
    that does not verify, a name that does not resolve). The TLS context (`ca_file`, or the
    system's CAs) is loaded when this is made, while the caller may still read the file (the
    forwarder drops its privileges next). At most `answer_bytes` of an answer are read; a longer
    one ends the kept-alive connection."""

    def __init__(self, address: str, https: bool, host: str, port: int, ca_file: str = "", *,
                 connect_timeout_s: float, total_timeout_s: float, answer_bytes: int = 65_536):
        self.address = address          # as the operator wrote it (for messages)
        self.https = https
        self.host = host
        self.port = port
        self.tls = ssl.create_default_context(cafile=ca_file or None) if https else None
        self.connect_timeout_s = connect_timeout_s
        self.total_timeout_s = total_timeout_s
        self.answer_bytes = answer_bytes
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection (and True), or a new one (and False)."""
        if self._conn is not None:
            return self._conn, True
        if self.https:
            self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout_s,
                                                     context=self.tls)
        else:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s)
        return self._conn, False

    def post(self, target: str, body: bytes | None, headers: dict, slow_answer: bool = False,
             method: str = "POST") -> tuple[int, str, bytes]:
        """(status, reason, the answer's first answer_bytes). `slow_answer`: the peer answers only
        after work of its own (our server's fsync), so the socket waits up to the total deadline
        for it rather than the connect timeout. `method`: "GET" (no body) for a question."""
        for _attempt in range(2):
            conn, reused = self._connection()
            aborted = threading.Event()
            timer = threading.Timer(self.total_timeout_s, self._abort, (conn, aborted))
            timer.start()
            try:
                conn.request(method, target, body=body, headers=headers)
                if slow_answer and conn.sock is not None:
                    conn.sock.settimeout(self.total_timeout_s)
                response = conn.getresponse()
                answer = response.read(self.answer_bytes)
                if not response.isclosed() or response.will_close:
                    self.close()
                if aborted.is_set():
                    raise OSError("aborted")
                return response.status, response.reason, answer
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise Unreachable("%s: the certificate does not verify: %s" % (self.address, exc.verify_message))
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if aborted.is_set():
                    raise Unreachable("%s: no answer within %.0f s" % (self.address, self.total_timeout_s)) from None
                if reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    continue        # the peer had closed the idle kept-alive connection: once more, anew
                if isinstance(exc, socket.gaierror):
                    raise Unreachable("%s does not resolve: %s" % (self.host, exc.strerror)) from None
                raise Unreachable("%s: %s" % (self.address, getattr(exc, "strerror", None) or exc)) from None
            finally:
                timer.cancel()
        raise Unreachable("%s: the connection closed twice" % self.address)

    @staticmethod
    def _abort(conn: http.client.HTTPConnection, aborted: threading.Event) -> None:
        # The total deadline: whatever the exchange waits on (connect, send, the answer) fails now.
        aborted.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
