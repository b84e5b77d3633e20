"""The daily event log is the source of truth under both backends (server/store/daylog.py).

Through a real `maltrail-engine server` on loopback, on SQLite and on ClickHouse (backend_extra):
what the server stored is in its log (`maltrail-engine tail --log-dir`); events that reached the
log but not the index (the crash between the two, made exactly by appending to the log with the
shared writer while the server is stopped; or an index that refuses while the server runs, which
its indexer process retries) are indexed at the next start or once the index takes them, each
exactly once.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import uuid

import pytest

from config import load_config
from events.log import EventLogWriter, file_name_for
from events.record import Event
from server.store import open_store
from tests.server_proc import WAIT_LIMIT_S, ServerProc, backend_extra  # noqa: F401  (fixture)
from tests.test_server_intake import T0_S, comparable, every_event, flood, log_events, udp


def stored_events(server: ServerProc) -> list[tuple]:
    """Every event the server's store answers, read by opening the store its config names (the
    server is stopped: one process owns a log directory)."""
    with open_store(load_config(str(server.config))) as store:
        return sorted(comparable(e._asdict()) for e in every_event(store, 0, 1 << 62, limit=5000))


def late_events(n: int) -> list[Event]:
    base = T0_S * 1_000_000 + 7_000
    return [Event(base + i, "late", "10.9.9.%d" % i, 2000 + i, "2001:db8::77", 25, "TCP", "IP", "2001:db8::77",
                  "spam", "(static)", "medium", 1, base + i) for i in range(n)]


def test_the_log_holds_what_either_backend_stored_and_a_kill_loses_nothing(tmp_path, backend_extra):
    server = ServerProc(tmp_path, extra=backend_extra).start()
    payloads = flood(3000)
    server.send(payloads)
    server.until(lambda h: udp(h)["stored"] == len(payloads))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=WAIT_LIMIT_S)
    logged = log_events(server.log_dir)
    assert len(logged) == len(payloads)
    # The crash between the log's fsync and the index: pairs in the log the index never took.
    extra = late_events(7)
    with EventLogWriter(str(server.log_dir)) as writer:
        writer.write(extra)
    again = ServerProc(tmp_path, log_dir=server.log_dir, extra=backend_extra).start()
    assert again.health()["store"]["repaired_events"] == len(extra)
    assert again.stop() == 0, again.stderr()
    assert "indexed 7 event(s) the log held beyond the index" in again.stderr()
    # A second start finds nothing to repair: nothing is inserted twice.
    third = ServerProc(tmp_path, log_dir=server.log_dir, extra=backend_extra).start()
    assert third.health()["store"]["repaired_events"] == 0
    assert third.stop() == 0, third.stderr()
    assert stored_events(server) == log_events(server.log_dir)
    assert len(log_events(server.log_dir)) == len(payloads) + len(extra)


@contextlib.contextmanager
def index_refusing(server: ServerProc, backend: str, day_name: str):
    """While inside, the index refuses every batch of `day_name`'s day: SQLite's day database held
    locked by another connection (the server's write waits out its busy timeout, then fails);
    ClickHouse's events table renamed away (its INSERT fails)."""
    if backend == "sqlite":
        conn = sqlite3.connect(str(server.log_dir / "index" / (day_name[:10] + ".sqlite")), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import base64
    import re
    import urllib.request
    cfg = load_config(str(server.config)).server
    db = cfg.clickhouse_database
    assert re.fullmatch(r"t_[0-9a-f]+", db)

    def run(sql: str) -> None:
        basic = base64.b64encode(("%s:%s" % (cfg.clickhouse_user, cfg.clickhouse_password)).encode()).decode()
        req = urllib.request.Request(cfg.clickhouse_url + "/", data=sql.encode(),
                                     headers={"Authorization": "Basic " + basic})
        urllib.request.urlopen(req, timeout=30).close()

    run("RENAME TABLE %s.events TO %s.events_away" % (db, db))
    try:
        yield
    finally:
        run("RENAME TABLE %s.events_away TO %s.events" % (db, db))


def test_a_batch_the_index_refused_is_stored_and_indexed_once_the_index_takes_it(tmp_path, backend_extra):
    # The intake stores in the log; the indexer process (server/indexer.py) indexes from it, so
    # an index that refuses costs the intake nothing: the batch counts as stored, the lag says
    # the index misses it, and the indexer retries until the index takes it, exactly once.
    backend = "clickhouse" if backend_extra else "sqlite"
    server = ServerProc(tmp_path, extra=backend_extra).start()
    first = flood(100)
    server.send(first)
    server.until(lambda h: udp(h)["stored"] == len(first))
    refused = flood(50, base_s=T0_S + 600)
    with index_refusing(server, backend, file_name_for(T0_S * 1_000_000)):
        server.send(refused)
        h = server.until(lambda h: udp(h)["stored"] == len(first) + len(refused)
                         and h["store"]["indexer"]["failed_rounds"] > 0, indexed=False)
        assert h["store"]["index_lag_events"] == len(refused)
        assert udp(h)["dropped"] == {}
    later = flood(20, base_s=T0_S + 1200)
    server.send(later)
    h = server.until(lambda h: udp(h)["stored"] == len(first) + len(refused) + len(later))
    assert h["store"]["events_indexed"] == len(first) + len(refused) + len(later)
    assert h["store"]["index_lag_events"] == 0
    assert server.stop() == 0, server.stderr()
    assert "indexer: cannot index (retrying every 1 s)" in server.stderr()
    assert len(log_events(server.log_dir)) == len(first) + len(refused) + len(later)
    assert stored_events(server) == log_events(server.log_dir)


def test_the_clickhouse_backend_refuses_a_log_directory_in_use(tmp_path, clickhouse_server):
    from tests.server_proc import clickhouse_extra
    extra = clickhouse_extra(clickhouse_server, "t_" + uuid.uuid4().hex[:12])
    server = ServerProc(tmp_path, extra=extra).start()
    try:
        second = ServerProc(tmp_path, log_dir=server.log_dir, extra=extra)
        second.start(wait=False)
        assert second.proc.wait(timeout=WAIT_LIMIT_S) == 1
        assert "one process owns a log directory" in second.stderr()
    finally:
        assert server.stop() == 0


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))


def test_a_clickhouse_store_dropped_is_rebuilt_from_the_log_and_reindex_says_so(tmp_path, clickhouse_server):
    """`server reindex` does not pretend to rebuild ClickHouse: it says how (drop the database,
    start again); and doing that gives back every event the log holds."""
    import base64
    import subprocess
    import urllib.request

    from tests.server_proc import clickhouse_extra
    from tests.test_corpus import console_script
    database = "t_" + uuid.uuid4().hex[:12]
    server = ServerProc(tmp_path, extra=clickhouse_extra(clickhouse_server, database)).start()
    sent = flood(300)
    server.send(sent)
    server.until(lambda h: udp(h)["stored"] == len(sent))
    assert server.stop() == 0, server.stderr()
    before = stored_events(server)
    assert len(before) == len(sent) and before == log_events(server.log_dir)

    out = subprocess.run([console_script(), "server", "-c", str(server.config), "reindex"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "drop its database (%s)" % database in out.stderr, out.stderr

    basic = base64.b64encode(("%s:%s" % (clickhouse_server.user, clickhouse_server.password)).encode()).decode()
    req = urllib.request.Request(clickhouse_server.url, data=("DROP DATABASE " + database).encode(),
                                 headers={"Authorization": "Basic " + basic})
    urllib.request.urlopen(req, timeout=30).close()
    again = ServerProc(tmp_path, log_dir=server.log_dir, extra=clickhouse_extra(clickhouse_server, database)).start()
    again.until(lambda h: h["store"]["ready"])
    assert again.stop() == 0, again.stderr()
    assert stored_events(again) == before
