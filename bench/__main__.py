"""`python -m bench COMMAND ...`: one entry point for the benchmarks (see bench/README.md).

`replay` runs bench/replay.py, `generate` bench/generate.py, `floods` bench/floods.py,
`forward` bench/forward.py, `update` bench/update.py, `server-udp` bench/server_udp.py,
`server-https` bench/server_https.py, `server-query` bench/server_query.py, `clickhouse-store`
bench/clickhouse_store.py and `ui` bench/ui.py; `trails`
and `ipc` run the micro benchmarks, which also stay runnable as `python -m bench.trails` and
`python -m bench.ipc`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "replay": ("bench.replay", "replay benchmark: the engine over pcaps, with its baselines"),
    "generate": ("bench.generate", "write the mix / hard benchmark pcaps"),
    "trails": ("bench.trails", "micro: trail database build, load and lookups"),
    "update": ("bench.update", "micro: a whole trail update (fetch + merge + build) against the build alone"),
    "ipc": ("bench.ipc", "micro: worker -> log writer transport"),
    "floods": ("bench.floods", "the heuristics' bounded state filled to its caps: memory and time"),
    "forward": ("bench.forward", "forwarding: events/s per destination kind, the sensor with forwarding on vs off"),
    "server-udp": ("bench.server_udp", "the server's UDP intake: the highest rate held with zero loss"),
    "server-https": ("bench.server_https", "the server's HTTPS intake: events/s of acknowledged sensor batches"),
    "server-query": ("bench.server_query", "the server's store queries over a day and 30 days, both backends"),
    "clickhouse-store": ("bench.clickhouse_store", "micro: the ClickHouse store alone, ingest and query latency"),
    "ui": ("bench.ui", "the web UI: time to the first complete dashboard (server and browser), page weight"),
}


def usage() -> str:
    lines = ["usage: python -m bench COMMAND [options]  (COMMAND --help for its options)", "", "commands:"]
    lines += ["  %-16s %s" % (name, text) for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print("python -m bench: unknown command %r\n\n%s" % (argv[0], usage()), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
