"""engine.sources.live.LiveCapture for real: a veth pair into a network namespace made by the test.

Frames are written from inside the namespace with a raw AF_PACKET socket on the namespace end and
read with LiveCapture on the host end. IPv6 is switched off on both ends first so the kernel adds
no router solicitations or MLD reports of its own; the frames are unicast to a MAC address nobody
owns, so the host drops them after capture. Everything is removed again in the fixture's finally.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import time

import pytest

from engine.sources.live import CaptureOpenError, LiveCapture
from tests.netns import DST_MAC, SRC_MAC, send_frames as _send, veth  # noqa: F401 (veth is a fixture)
from workers.batch import LINKTYPE_ETHERNET


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 99, 0, 2]), bytes([10, 99, 0, 1]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + udp


def dns_query(marker: int) -> bytes:
    name = b"\x07example\x03com\x00"
    return udp_frame(53, struct.pack("!HHHHHH", marker, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01")


def other_frame(marker: int, size: int = 64) -> bytes:
    body = (b"maltrail-engine live test %d " % marker) * 40
    return (DST_MAC + SRC_MAC + b"\x88\xb5" + body)[:size]


def _collect(capture, until, timeout_s=5.0):
    """Frames as (bytes, caplen, wirelen, linktype, ts_ns) until `until(frames)` or the timeout."""
    frames = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(frames):
        batch = capture.read_batch(max_frames=64, max_wait_ms=100)
        for i in range(len(batch)):
            frames.append((batch.frame(i), batch.caplens[i], batch.wirelens[i], batch.linktypes[i], batch.ts_ns[i]))
    return frames


@pytest.mark.root
def test_frames_arrive_with_their_bytes_and_link_type(veth):
    namespace, host, peer = veth
    sent = [other_frame(1), udp_frame(9999, b"x" * 40), dns_query(0x1234)]
    with LiveCapture(host, snaplen_bytes=2000, promiscuous=True, immediate=True) as capture:
        assert capture.linktype == LINKTYPE_ETHERNET
        started_ns = time.time_ns()
        _send(namespace, peer, sent)
        frames = _collect(capture, lambda got: all(f in [g[0] for g in got] for f in sent))
        stats = capture.stats()
    got = [g for g in frames if g[0] in sent]
    assert [g[0] for g in got] == sent
    for data, caplen, wirelen, linktype, ts_ns in got:
        assert caplen == wirelen == len(data)
        assert linktype == LINKTYPE_ETHERNET
        # Live timestamps come from the kernel clock: sanity only, not exactness.
        assert abs(ts_ns - started_ns) < 60 * 1_000_000_000
    assert stats["received"] >= len(sent)
    assert set(stats) == {"received", "dropped", "if_dropped"}


@pytest.mark.root
def test_bpf_filter_passes_dns_only(veth):
    namespace, host, peer = veth
    with LiveCapture(host, bpf_filter="udp port 53") as capture:
        _send(namespace, peer, [other_frame(2), udp_frame(9999, b"y" * 40), dns_query(0x4242), other_frame(3)])
        frames = _collect(capture, lambda got: any(g[0] == dns_query(0x4242) for g in got))
        frames += _collect(capture, lambda got: False, timeout_s=0.3)   # anything that trails in
    assert [g[0] for g in frames] == [dns_query(0x4242)]


@pytest.mark.root
def test_snaplen_cuts_live_frames(veth):
    namespace, host, peer = veth
    big = other_frame(4, size=600)
    with LiveCapture(host, snaplen_bytes=100) as capture:
        _send(namespace, peer, [big])
        frames = _collect(capture, lambda got: any(g[0] == big[:100] for g in got))
    data, caplen, wirelen, _linktype, _ts = next(g for g in frames if g[0] == big[:100])
    # pypcap does not report the length on the wire, so wirelen is the captured length here.
    assert caplen == 100 and wirelen == 100


@pytest.mark.root
def test_two_captures_on_one_interface_both_see_frames(veth):
    namespace, host, peer = veth
    with LiveCapture(host) as first, LiveCapture(host, bpf_filter="udp") as second:
        _send(namespace, peer, [dns_query(7), other_frame(5)])
        seen_first = _collect(first, lambda got: any(g[0] == other_frame(5) for g in got))
        seen_second = _collect(second, lambda got: any(g[0] == dns_query(7) for g in got))
    assert {dns_query(7), other_frame(5)} <= {g[0] for g in seen_first}
    assert [g[0] for g in seen_second] == [dns_query(7)]


@pytest.mark.root
def test_read_batch_returns_within_the_wait(veth):
    _namespace, host, _peer = veth
    with LiveCapture(host, bpf_filter="udp port 1") as capture:
        started = time.monotonic()
        batch = capture.read_batch(max_wait_ms=200)
        waited = time.monotonic() - started
        assert len(batch) == 0
        assert 0.15 <= waited < 1.5
        started = time.monotonic()
        assert len(capture.read_batch(max_wait_ms=0)) == 0
        assert time.monotonic() - started < 0.5


def test_missing_interface_lists_the_available_ones():
    with pytest.raises(CaptureOpenError) as info:
        LiveCapture("mte-nosuch0")
    message = str(info.value)
    assert "interface 'mte-nosuch0' not found; available: " in message
    assert "lo" in message


@pytest.mark.root
def test_bad_filter_reports_libpcap_and_the_filter(veth):
    _namespace, host, _peer = veth
    with pytest.raises(CaptureOpenError) as info:
        LiveCapture(host, bpf_filter="udp port 53 and and")
    message = str(info.value)
    assert "bad BPF filter 'udp port 53 and and'" in message
    assert "syntax error" in message          # libpcap's own words


@pytest.mark.root
def test_unprivileged_open_explains_the_capabilities(veth):
    _namespace, host, _peer = veth
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop privileges")
    probe = (
        "from engine.sources.live import LiveCapture, CaptureOpenError\n"
        "try:\n"
        "    LiveCapture(%r)\n"
        "except CaptureOpenError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('opened')\n" % host
    )
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip("the unprivileged user cannot import the project: %s" % result.stderr.strip()[-200:])
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "capturing on %r needs root or CAP_NET_RAW " % host in message
    assert "setcap cap_net_raw=eip" in message
