"""The server's indexer process (server/indexer.py): a real `maltrail-engine server` on loopback,
real Maltrail datagrams, and the indexer itself stopped, killed and continued with real signals.

What is checked: the intake counts an event stored once it is in the log and the index follows
in its own process (not a thread of the server); the lag is published in /api/v1/health and
/metrics while the indexer cannot run, and goes back to zero; an indexer killed mid-stream is
started again, counted and logged, and the index ends with every event exactly once; a stopped
server stops its indexer; a killed server's indexer dies with it and the next start indexes
everything once. Every test runs on both backends.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

from tests.server_proc import WAIT_LIMIT_S, ServerProc, backend_extra  # noqa: F401  (the fixture)

NOW_S = 1_796_000_000       # a fixed instant (2026-11-30), so no test depends on the wall clock


def datagrams(first: int, n: int) -> list[bytes]:
    """n distinct Maltrail datagrams ("<epoch> <event line>"), sources 10.x numbered from `first`."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW_S))
    out = []
    for i in range(first, first + n):
        out.append(('%d "%s.%06d" idx-sensor 10.%d.%d.%d %d 192.0.2.7 80 TCP IP 192.0.2.7 "malware" (static)\n'
                    % (NOW_S, clock, i, i >> 16 & 255, i >> 8 & 255, i & 255, 1024 + i % 60000)).encode())
    return out


def send_all(server: ServerProc, payloads: list[bytes], stored_before: int = 0) -> dict:
    """Send and wait until the server has them in its log (not necessarily in its index)."""
    server.send(payloads)
    return server.until(lambda h: h["intake"]["udp"]["stored"] >= stored_before + len(payloads), indexed=False)


def indexed_count(server: ServerProc) -> int:
    """How many events the index holds for the test's hour (the store's roll-ups, as the API
    reads them): the same count on both backends."""
    from server.store import AggregateQuery, TimeRange
    counts = server_store_counts(server, AggregateQuery(TimeRange(NOW_S * 10**6 - 3600 * 10**6,
                                                                 NOW_S * 10**6 + 3600 * 10**6)))
    return sum(n for _bucket, _value, n in counts)


def server_store_counts(server: ServerProc, query) -> list:
    """The counts by type the server's index answers, read after it stopped with the server's
    own configuration through an index-only view (server/indexer.py open_index: no start-up
    repair, which would hide an index that missed events)."""
    from config import load_config
    from server.indexer import open_index
    store = open_index(load_config(str(server.config)), warn=lambda text: None)
    try:
        return store.counts(query, "type").rows
    finally:
        store.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int) -> None:
    limit = time.monotonic() + WAIT_LIMIT_S
    while alive(pid):
        assert time.monotonic() < limit, "process %d is still running" % pid
        time.sleep(0.02)


def parent_of(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_the_index_is_filled_by_a_process_of_its_own_and_its_lag_is_published(tmp_path, backend_extra):
    server = ServerProc(tmp_path, extra=backend_extra).start()
    try:
        h = send_all(server, datagrams(0, 500))
        indexer = h["store"]["indexer"]["pid"]
        assert indexer and indexer != server.proc.pid
        assert parent_of(parent_of(indexer)) == server.proc.pid      # server -> keeper -> indexer
        server.wait_indexed()

        # The indexer stopped: the intake still stores (in the log), and the lag says how much
        # the index misses and since when.
        os.kill(indexer, signal.SIGSTOP)
        try:
            h = send_all(server, datagrams(500, 700), 500)
            assert h["intake"]["udp"]["stored"] == 1200
            h = server.until(lambda h: h["store"]["index_lag_s"] > 0, indexed=False)
            assert h["store"]["index_lag_events"] == 700
            with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
                metrics = r.read().decode()
            assert "maltrail_server_store_index_lag_events 700.0" in metrics
            assert "maltrail_server_indexer_restarts_total 0.0" in metrics
        finally:
            os.kill(indexer, signal.SIGCONT)
        h = server.wait_indexed()
        assert h["store"]["index_lag_events"] == 0 and h["store"]["index_lag_s"] == 0
        assert h["store"]["indexer"]["pid"] == indexer and h["store"]["indexer"]["restarts"] == 0
    finally:
        assert server.stop() == 0
    wait_gone(indexer)      # stopped with the server
    assert indexed_count(server) == 1200


def test_a_killed_indexer_is_started_again_and_the_index_holds_every_event_once(tmp_path, backend_extra):
    server = ServerProc(tmp_path, extra=backend_extra).start()
    try:
        h = send_all(server, datagrams(0, 3000))
        first = h["store"]["indexer"]["pid"]
        # Killed whenever it is (possibly inside a batch): what it committed stays, the next one
        # goes on from the index's own position.
        os.kill(first, signal.SIGKILL)
        send_all(server, datagrams(3000, 2000), 3000)
        h = server.until(lambda h: h["store"]["indexer"]["restarts"] == 1 and h["store"]["indexer"]["running"])
        assert h["store"]["indexer"]["pid"] not in (0, first)
        assert h["store"]["index_lag_events"] == 0
        assert "the indexer (pid %d) died (signal 9); starting it again (restart 1)" % first in server.stderr()
        second = h["store"]["indexer"]["pid"]
    finally:
        assert server.stop() == 0
    wait_gone(second)
    assert indexed_count(server) == 5000


def test_a_killed_server_takes_its_indexer_along_and_the_next_start_indexes_everything_once(tmp_path, backend_extra):
    server = ServerProc(tmp_path, extra=backend_extra).start()
    h = send_all(server, datagrams(0, 2000))
    indexer = h["store"]["indexer"]["pid"]
    keeper = parent_of(indexer)
    os.kill(indexer, signal.SIGSTOP)        # it cannot index what comes now: the next start must
    send_all(server, datagrams(2000, 1000), 2000)
    server.stop(signal.SIGKILL)
    wait_gone(keeper)
    wait_gone(indexer)                      # a stopped process gets SIGKILL too
    again = ServerProc(tmp_path, log_dir=server.log_dir, extra=backend_extra).start()
    try:
        h = again.wait_indexed()
        assert h["store"]["indexer"]["pid"] not in (0, indexer)
    finally:
        assert again.stop() == 0
    assert indexed_count(again) == 3000
