"""`GET /metrics`: the server's counters in Prometheus' text format.

Owns the metric names and what each is read from; reads, at scrape time, what the server keeps
anyway (server/intake.py IntakeCounters, server/sensors.py HttpsIntake and Registry, the store's
status, AuthWeb's refusals, and the API's records: `server.api_stats` (per-endpoint answers and latency
histograms) and the refusal counts of server/api/).
Must not count anything itself, nor change what it reads.

Who may scrape: /metrics needs no login, as Prometheus scrapes without one, but answers only
clients in [server] metrics_networks (default: this host, 127.0.0.0/8 and ::1); anyone else gets
403. It carries sensor names and counts, never an event's address, so no user scope applies.

Names (all prefixed maltrail_server_):
  udp_datagrams_total, udp_events_total, udp_stored_total     the UDP intake (Maltrail's sensors)
  udp_refused_total{reason}                                   datagrams refused, by reason
  dropped_total{reason}                                       UDP datagrams / events dropped
  https_batches_total, https_events_total, https_repeated_total  our sensors' batches
  https_refused_total{reason}                                 HTTPS batches refused, by reason
  http_refused_total{reason}                                  refusals (login, session, size, slow clients)
  auth_records_sent_total{destination}, auth_records_dropped_total{reason}   login records to collectors
  sensors, sensors_silent                                     the registry
  sensor_last_seen_seconds{sensor}, sensor_silent{sensor}, sensor_events_per_second{sensor},
  sensor_forwarding_lag_seconds{sensor}
  store_ready, store_day_files, store_events_indexed              the store's status
  store_index_lag_events, store_index_lag_seconds, indexer_restarts_total   the indexer process
  api_request_seconds{endpoint} (histogram), api_responses_total{endpoint,status}  server.api_stats
  api_refused_total{reason}                                   the API's refusals (bad parameters, gates)
"""

from __future__ import annotations

import asyncio
import ipaddress

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

METRICS_PATH = "/metrics"
# The text format every Prometheus reads (Debian's included); generate_latest writes it.
PREFIX = "maltrail_server_"


class ServerCollector:
    """A prometheus_client collector reading the server's own counters at each scrape."""

    def __init__(self, server):
        self.server = server
        self.store_status = None        # the last status read (the store may block: read in a thread)

    def collect(self):
        s = self.server
        c = s.counters

        def counter(name, doc, value=None, labels=(), rows=()):
            m = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
            if value is not None:
                m.add_metric([], value)
            for lab, v in rows:
                m.add_metric(list(lab), v)
            return m

        def gauge(name, doc, value=None, labels=(), rows=()):
            m = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
            if value is not None:
                m.add_metric([], value)
            for lab, v in rows:
                m.add_metric(list(lab), v)
            return m

        yield counter("udp_datagrams", "UDP datagrams received", c.datagrams)
        yield counter("udp_events", "events parsed from UDP datagrams", c.events)
        yield counter("udp_stored", "events from UDP datagrams the store made durable", c.stored)
        yield counter("udp_refused", "UDP datagrams refused, by reason", labels=("reason",),
                      rows=[((r,), n) for r, n in sorted(c.refused_by_reason().items())])
        yield counter("dropped", "UDP datagrams or events dropped, by reason", labels=("reason",),
                      rows=[((r,), n) for r, n in sorted(c.dropped.items())])
        h = s.https_intake
        if h is not None:
            hc = h.counters
            yield counter("https_batches", "HTTPS batches acknowledged (stored or repeated)", hc.batches)
            yield counter("https_events", "events from HTTPS batches stored", hc.events)
            yield counter("https_repeated", "events of HTTPS batches already stored, acknowledged again",
                          hc.repeated)
            yield counter("https_refused", "HTTPS batches refused, by reason", labels=("reason",),
                          rows=[((r,), n) for r, n in sorted(hc.refused.items())])
        refused = dict(s.auth_web.refusals)
        for reason, n in getattr(getattr(s, "slow_clients", None), "refusals", {}).items():
            refused[reason] = refused.get(reason, 0) + n
        yield counter("http_refused", "HTTP requests refused (login, session, CSRF, size, slow clients), by reason",
                      labels=("reason",), rows=[((r,), n) for r, n in sorted(refused.items())])
        forwarder = getattr(getattr(s, "listeners", None), "auth_forwarder", None)
        if forwarder is not None:
            st = forwarder.stats()
            yield counter("auth_records_sent", "login records delivered to a collector, by destination",
                          labels=("destination",), rows=[((d,), n) for d, n in sorted(st["sent"].items())])
            yield counter("auth_records_dropped", "login records not delivered, by reason", labels=("reason",),
                          rows=[((r,), n) for r, n in sorted(st["dropped"].items())])
        if s.registry is not None:
            sensors = s.registry.snapshot()
            yield gauge("sensors", "sensors known (heard, or holding a key)", len(sensors))
            yield gauge("sensors_silent", "sensors silent for longer than [server] sensor_silent_after_s",
                        sum(1 for r in sensors if r["silent"]))
            yield gauge("sensor_silent", "1 when the sensor is silent", labels=("sensor",),
                        rows=[((r["name"],), int(r["silent"])) for r in sensors])
            yield gauge("sensor_last_seen_seconds", "when the sensor was last heard (Unix time)", labels=("sensor",),
                        rows=[((r["name"],), r["last_seen_unix"]) for r in sensors if r["last_seen_unix"]])
            yield gauge("sensor_events_per_second", "the sensor's events per second over the last minute",
                        labels=("sensor",), rows=[((r["name"],), r["events_per_s"]) for r in sensors])
            yield gauge("sensor_forwarding_lag_seconds", "how far behind its log the sensor's forwarder said it was",
                        labels=("sensor",), rows=[((r["name"],), r["forwarding_lag_s"]) for r in sensors
                                                  if r["forwarding_lag_s"] is not None])
        st = self.store_status
        if st is not None:
            yield gauge("store_ready", "1 when the store answers", int(bool(st.ready)))
            yield gauge("store_day_files", "days the store holds", st.days)
            yield counter("store_events_indexed", "events the store indexed since the start", st.events_indexed)
            if "index_lag_events" in st.details:        # an indexer process fills the index (server/indexer.py)
                yield gauge("store_index_lag_events", "events in the log the index does not hold yet",
                            st.details["index_lag_events"])
                yield gauge("store_index_lag_seconds", "how long the oldest event not yet indexed has been in the log",
                            st.details["index_lag_s"])
                yield counter("indexer_restarts", "indexer processes started again after one died",
                              st.details["indexer"]["restarts"])
        # The API's own records (server/api/v1.py ApiStats and the refusal counts of v1 and compat).
        stats = s.api_stats.as_dict() if getattr(s, "api_stats", None) is not None else {}
        latency = HistogramMetricFamily(PREFIX + "api_request_seconds",
                                        "time to answer API requests, by endpoint", labels=["endpoint"])
        for endpoint, v in sorted(stats.items()):
            buckets = [(("+Inf" if b == "+Inf" else str(float(b) / 1000.0)), n)
                       for b, n in v["latency_ms"]["buckets"].items()]
            latency.add_metric([endpoint], buckets, v["latency_ms"]["sum"] / 1000.0)
        yield latency
        yield counter("api_responses", "API answers, by endpoint and HTTP status", labels=("endpoint", "status"),
                      rows=[((e, st), n) for e, v in sorted(stats.items()) for st, n in sorted(v["by_status"].items())])
        refusals: dict[str, int] = {}
        for part in (getattr(s, "api", None), getattr(s, "compat", None)):
            for reason, n in (getattr(part, "refusals", None) or {}).items():
                refusals[reason] = refusals.get(reason, 0) + n
        yield counter("api_refused", "API requests refused (a bad parameter, a gate), by reason", labels=("reason",),
                      rows=[((r,), n) for r, n in sorted(refusals.items())])


def allowed_networks(texts) -> list:
    return [ipaddress.ip_network(t, strict=False) for t in texts]


def setup(app, server) -> None:
    """Mount /metrics (outside /api/v1: no session; the network rule of the module doc)."""
    from aiohttp import web
    collector = ServerCollector(server)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    networks = allowed_networks(server.cfg.server.metrics_networks)
    refused = {"count": 0}
    server.metrics_refused = refused

    async def metrics(request):
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0]) if peer else None
        except ValueError:
            address = None
        if address is not None and address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address is None or not any(address in n for n in networks if n.version == address.version):
            refused["count"] += 1
            return web.json_response({"error": "/metrics answers [server] metrics_networks only"}, status=403)
        loop = asyncio.get_running_loop()
        collector.store_status = await loop.run_in_executor(None, server.store.status)
        body = await loop.run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app.router.add_get(METRICS_PATH, metrics)


__all__ = ["ServerCollector", "setup", "METRICS_PATH"]
