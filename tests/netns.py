"""Network namespaces and veth pairs for live-capture tests, and a raw-socket frame sender.

Frames are written from inside the namespace with a raw AF_PACKET socket on the namespace end and
captured on the host end. IPv6 is switched off on both ends so the kernel adds no router
solicitations or MLD reports of its own. Everything is removed again when the fixture ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import need_root

DST_MAC = bytes.fromhex("020000000001")      # locally administered, owned by no interface
SRC_MAC = bytes.fromhex("020000000002")

SENDER = r"""
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
for text in sys.argv[2:]:
    sock.send(bytes.fromhex(text))
sock.close()
"""


def run(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@pytest.fixture
def veth():
    """(namespace, host_end, namespace_end): a veth pair, one end moved into a fresh namespace."""
    need_root()
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")
    tag = "%d%s" % (os.getpid() % 100000, os.urandom(2).hex())
    namespace, host, peer = "mte-%s" % tag, "mteh%s" % tag, "mten%s" % tag
    created = run("ip", "netns", "add", namespace, check=False)
    if created.returncode != 0:
        pytest.skip("cannot create a network namespace: %s" % created.stderr.strip())
    try:
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", namespace)
        for conf, prefix in ((host, ()), (peer, ("ip", "netns", "exec", namespace))):
            run(*prefix, "sysctl", "-q", "-w", "net.ipv6.conf.%s.disable_ipv6=1" % conf, check=False)
        run("ip", "link", "set", host, "up")
        run("ip", "netns", "exec", namespace, "ip", "link", "set", peer, "up")
        yield namespace, host, peer
    finally:
        run("ip", "link", "del", host, check=False)
        run("ip", "netns", "del", namespace, check=False)


def send_frames(namespace, peer, frames):
    run("ip", "netns", "exec", namespace, sys.executable, "-c", SENDER, peer, *[f.hex() for f in frames])


