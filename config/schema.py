"""The declaration of maltrail.toml: every section and key, with its type, default, allowed
values, a one-line doc and the Maltrail option it stands for.

Owns `SCHEMA` (the one declaration; everything else in config/, the defaults, messages, the
printer and the docs test in tests/test_config.py, is derived from it: add a key here and nowhere
else), `SECTION_DOCS`, `Key`, and the check, run at import, that the schema holds to its own rules.

Must not: hold rules for a kind of value (those are config/values.py, chosen by `Key.type`), read
files, or know who uses a key.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Iterator

from config.values import FORMS, VALUE_TYPES, ValueType

__all__ = ["Key", "SCHEMA", "SECTION_DOCS", "iter_keys"]


@dataclass(frozen=True)
class Key:
    """One configuration key.

    type:      "int", "float", "bool", "str", "list" (a list of strings) or "ints" (a list of
               integers, each from min to max).
    default:   the effective default value (lists are tuples, so a default cannot be mutated).
    doc:       one line saying what the key does.
    unit:      the unit of an int ("seconds", "bytes"), also carried in the key's name.
    min/max:   inclusive range of an int.
    words:     strings accepted in place of an int (workers = "auto").
    form:      name of a rule in config.values.FORMS that a str value (or each list item) must
               satisfy.
    empty_ok:  a str may be "" (the doc says what empty means).
    split:     a list may also be written as one comma-separated string.
    min_items: fewest items a list may hold.
    maltrail:  the maltrail.conf option this corresponds to, "" when there is none.
    secret:    the value is a secret: never printed (check-config shows whether it is set).
    """

    type: str
    default: Any
    doc: str
    unit: str = ""
    min: int | None = None
    max: int | None = None
    words: tuple[str, ...] = ()
    form: str | None = None
    empty_ok: bool = False
    split: bool = False
    min_items: int = 0
    maltrail: str = ""
    secret: bool = False

    @property
    def rules(self) -> ValueType:
        """The rules of this key's type (config/values.py)."""
        return VALUE_TYPES[self.type]

    @property
    def allowed(self) -> str:
        """What the key accepts, in words, for messages and help text."""
        return self.rules.describe(self)


# The default severity rule, the same text as events/record.py DEFAULT_SEVERITY_REGEX (this
# package imports nothing of ours; tests/test_outputs_severity.py holds the two equal): this
# project's rule since its start, written as Maltrail's REMOTE_SEVERITY_REGEX would be.
DEFAULT_SEVERITY_REGEX = (
    r"(?is)\A(?:(?P<high>"
    r"(?=.* \([^()]*\)\Z).*?(?:malware|ransomware|botnet|c&c|c2 |\(c2\)|sinkhole|backdoor|rat\)).* \([^()]*\)"
    r"|(?!.* \([^()]*\)\Z).*?(?:malware|ransomware|botnet|c&c|c2 |\(c2\)|sinkhole|backdoor|rat\)).* .*"
    r"|.* (?-i:\(custom\)))"
    r"|(?P<low>"
    r"(?=.* \([^()]*\)\Z).*?(?:"
    r"reputation|attacker|scanner|crawler|spammer|abuser|bad history|compromised|parking|parked|tor exit|dynamic|free web|known"
    r").* \([^()]*\)"
    r"|(?!.* \([^()]*\)\Z).*?(?:"
    r"reputation|attacker|scanner|crawler|spammer|abuser|bad history|compromised|parking|parked|tor exit|dynamic|free web|known"
    r").* .*"
    r"|.* (?-i:\(heuristic\)))"
    r")\Z")


SECTION_DOCS: dict[str, str] = {
    "all": "settings shared by every part (Maltrail's [All] section)",
    "sensor": "the capturing sensor (Maltrail's [Sensor] section)",
    "heuristics": "the heuristic detections (all off when [sensor] use_heuristics = false): a switch "
                  "and a threshold each, and the caps on their state",
    "server": "the event server (`maltrail-engine server`): Maltrail's [Server] section",
}

SCHEMA: dict[str, dict[str, Key]] = {
    "all": {
        "log_dir": Key(
            "str", "/var/log/maltrail-engine", form="path",
            doc="directory the event log files are written to", maltrail="LOG_DIR"),
        "trails_artifact": Key(
            "str", "/var/lib/maltrail-engine/trails.mtdb", form="path",
            doc="compiled trail artifact the sensor loads (written by `trails build`)"),
        "trail_sources": Key(
            "list", (), form="path",
            doc="Maltrail trails.csv files and/or directories of Maltrail static trail files "
                "(*.txt) that `trails build` compiles", maltrail="TRAILS_FILE"),
        "custom_trails_dir": Key(
            "str", "", form="path", empty_ok=True,
            doc='directory of custom trail files (*.txt); "" for none',
            maltrail="CUSTOM_TRAILS_DIR"),
        "whitelist_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='file of whitelisted IP addresses and domains; "" for none',
            maltrail="USER_WHITELIST"),
        "min_trail_prefix_v4": Key(
            "int", 8, unit="bits", min=1, max=32,
            doc="IPv4 range trails wider than this prefix (0.0.0.0/0, a /4) are rejected when trails "
                "are built, with the reason: they would match (nearly) every address"),
        "min_trail_prefix_v6": Key(
            "int", 12, unit="bits", min=1, max=128,
            doc="IPv6 range trails wider than this prefix (::/0, 2000::/3) are rejected when trails "
                "are built, with the reason: they would match (nearly) every address"),
        "ip_minimum_feeds": Key(
            "int", 3, min=1, max=100,
            doc="an IP address that only feeds list is kept when at least this many feeds (distinct "
                "references) list it; what static or custom trails list is always kept; 1 keeps every "
                "feed address", maltrail="IP_MINIMUM_FEEDS"),
        "update_period_s": Key(
            "int", 86400, unit="seconds", min=600, max=604800, words=("off",),
            doc='how often the running sensor updates its trails (fetch the feeds, build, reload) in a '
                'child process; "off" for never on a schedule (SIGUSR1 still asks for one, and an edited '
                'custom trail file is still picked up offline)', maltrail="UPDATE_PERIOD"),
        "update_timeout_s": Key(
            "int", 3600, unit="seconds", min=10, max=86400,
            doc="the longest one trail update of the running sensor may take; past it, its process is killed, "
                "the failure reported and the trails in use kept"),
        "proxy_url": Key(
            "str", "", form="proxy_url", empty_ok=True,
            doc='HTTP(S) proxy used when fetching trail sources; "" for a direct connection',
            maltrail="PROXY_ADDRESS"),
        "custom_trails_url": Key(
            "list", (), form="feed_url", split=True,
            doc="URLs of your own trail lists (one trail per line), fetched with the feeds and kept as "
                "they are (reference \"(remote custom)\")", maltrail="CUSTOM_TRAILS_URL"),
        "disabled_feeds": Key(
            "list", ("turris", "ciarmy", "policeman", "myip", "alienvault"), form="feed_name", split=True,
            doc='trail feeds not fetched, by name (COMPATIBILITY.md lists them); "all" (or "*") leaves out '
                'every feed (custom_trails_url lists are still fetched); [] fetches every feed',
            maltrail="DISABLED_FEEDS"),
        "feed_updates": Key(
            "bool", True,
            doc="`trails update` (and the sensor's periodic update) fetches the trail feeds; false builds from "
                "trail_sources, custom_trails_dir and custom_trails_url only", maltrail="USE_FEED_UPDATES"),
        "disabled_trails_info_regex": Key(
            "str", "", form="regex", empty_ok=True,
            doc='trails whose label (info) this regular expression matches are left out when trails are built, '
                'whatever lists them; "" for none', maltrail="DISABLED_TRAILS_INFO_REGEX"),
        "feeds_dir": Key(
            "str", "/var/lib/maltrail-engine/feeds", form="path",
            doc="directory holding each feed's last good copy and their status (status.json)"),
        "feeds_ca_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='CA certificates (PEM) that verify https:// feeds; "" for the system\'s'),
        "severity_regex": Key(
            "str", DEFAULT_SEVERITY_REGEX, form="severity_regex", empty_ok=True,
            doc='how an event\'s severity is decided when it is made, for every output alike: a regular '
                'expression searched in "<info> <reference>"; of its named groups low, medium and high, the '
                'first in that order that matched names the severity; no match is medium. "" makes every '
                'event medium. The default is this project\'s rule (COMPATIBILITY.md)',
            maltrail="REMOTE_SEVERITY_REGEX"),
    },
    "sensor": {
        "sensor_name": Key(
            "str", "", form="name", empty_ok=True,
            doc='name written into every event; "" means the host name',
            maltrail="SENSOR_NAME"),
        "interface": Key(
            "list", ("any",), form="ifname", split=True, min_items=1,
            doc='interface(s) to capture on; "any" for all of them',
            maltrail="MONITOR_INTERFACE"),
        "capture_filter": Key(
            "str", "default", empty_ok=True,
            doc='BPF expression applied in the kernel; "default" keeps what detection needs '
                '(no bulk TCP), "" captures everything',
            maltrail="CAPTURE_FILTER"),
        "snaplen_bytes": Key(
            "int", 2000, unit="bytes", min=64, max=262144,
            doc="bytes kept of each captured frame", maltrail="SNAP_LEN"),
        "promiscuous": Key(
            "bool", True,
            doc="put the interface(s) in promiscuous mode (needed on a span port)"),
        "capture_buffer_bytes": Key(
            "int", 33554432, unit="bytes", min=1048576, max=4294967296,
            doc="kernel capture buffer per interface", maltrail="CAPTURE_BUFFER"),
        "workers": Key(
            "int", "auto", min=1, max=256, words=("auto",),
            doc='number of worker processes; "auto" is one per CPU core',
            maltrail="PROCESS_COUNT"),
        "ring_bytes": Key(
            "int", 16777216, unit="bytes", min=65536, max=1073741824,
            doc="shared-memory ring between the capture process and each worker"),
        "use_heuristics": Key(
            "bool", True,
            doc="run the heuristic checks as well as trail matching", maltrail="USE_HEURISTICS"),
        "allow_no_trails": Key(
            "bool", False,
            doc="start even when no usable trails are loaded (otherwise refuse to start)"),
        "condense_window_s": Key(
            "int", 60, unit="seconds", min=1, max=3600,
            doc="noise control: repeats of one trail from one source within this window become one "
                "record with a count and the first/last time"),
        "host_whitelist_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='per-host whitelist: lines "HOST TRAIL" (HOST an address or CIDR range, TRAIL a '
                'trail or a heuristic\'s name) silence that trail for that host only; "" for none'),
        "ignore_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='ignore rules: lines "SRC_IP SRC_PORT DST_IP DST_PORT" (each an address, CIDR, '
                'port, port range a-b, or * for any); matching events are dropped and counted; '
                '"" for none', maltrail="USER_IGNORELIST"),
        "ignore_regex": Key(
            "str", "", form="regex", empty_ok=True,
            doc='events whose text "SRC_IP SRC_PORT DST_IP DST_PORT PROTO TYPE TRAIL INFO REFERENCE" '
                'matches this regular expression are dropped and counted; "" for none',
            maltrail="IGNORE_EVENTS_REGEX"),
        "stats_interval_s": Key(
            "int", 60, unit="seconds", min=0, max=86400,
            doc="how often capture/worker statistics are logged; 0 = only at exit"),
        "stats_address": Key(
            "str", "", form="listen_address", empty_ok=True,
            doc='address the Prometheus endpoint (/metrics, /healthz) listens on, e.g. "127.0.0.1:9114" '
                'or "[::1]:9114" (port 0: any free port, named at start); "" = off',
            maltrail="STATS_ADDRESS"),
        "user": Key(
            "str", "maltrail-engine", form="name",
            doc='unprivileged account the workers, the log writer and (once its capture handles are '
                'open) the capture process run as when the sensor is started as root; the log '
                'directory is made to belong to it. "root" keeps root (not recommended). When the '
                'default account does not exist, "nobody" is used and a notice says so'),
        "log_server": Key(
            "str", "", form="endpoint_udp", empty_ok=True,
            doc='a Maltrail server (or ours) to send every event to, one UDP datagram each '
                '("<epoch seconds> <event line>"), "host:port" or "[IPv6]:port"; best effort, as in '
                'Maltrail; "" for none', maltrail="LOG_SERVER"),
        "log_server_secret": Key(
            "str", "", empty_ok=True, secret=True,
            doc='shared secret signing log_server datagrams as Maltrail\'s newer servers check them '
                '("MTS1 <HMAC>"); "" sends them unsigned', maltrail="LOG_SERVER_SECRET"),
        "update_server": Key(
            "str", "", form="feed_url", empty_ok=True,
            doc='a maltrail-engine server this sensor takes its trails from instead of the feeds: `trails update` '
                '(and the running sensor\'s periodic update) downloads the server\'s compiled artifact, checks its '
                'signature against update_server_key and adopts it through the normal reload; "http(s)://host:8338" '
                '(Maltrail\'s UPDATE_SERVER ".../trails" form is accepted); through [all] proxy_url if set; "" '
                'builds locally. Not imported from maltrail.conf: there it names a Maltrail server, which serves no '
                'signed artifact'),
        "update_server_key": Key(
            "str", "", empty_ok=True,
            doc='the server\'s artifact signing key, "ed25519:<base64>" (the server prints it at start and serves '
                'it at /trails/artifact.key: compare before pinning it); a download whose signature does not '
                'verify with it is refused and the trails in use stay'),
        "syslog_server": Key(
            "list", (), form="endpoint", split=True,
            doc='SIEM collectors receiving every event as CEF over syslog: "udp://host:514", '
                '"tcp://host:514" (RFC 6587 octet counting) or "tls://host:6514"; a bare "host:port" '
                'is UDP, as Maltrail\'s. TCP and TLS lose nothing through an outage or a restart. '
                'The server sends its login records here too, as Maltrail\'s does',
            maltrail="SYSLOG_SERVER"),
        "syslog_format": Key(
            "str", "maltrail", form="syslog_format",
            doc='"maltrail": Maltrail\'s CEF line byte for byte (no <PRI>, severity 0-2); "rfc5424": an '
                'RFC 5424 header and CEF severity on its 0-10 scale (3, 6, 9)'),
        "syslog_ca_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='CA certificates (PEM) that verify tls:// collectors; "" for the system\'s'),
        "syslog_client_cert": Key(
            "str", "", form="path", empty_ok=True,
            doc='certificate (PEM) presented to tls:// collectors that ask for one; "" for none'),
        "syslog_client_key": Key(
            "str", "", form="path", empty_ok=True,
            doc='private key (PEM) of syslog_client_cert, if not in the same file; "" for none'),
        "logstash_server": Key(
            "list", (), form="endpoint_udp_tcp", split=True,
            doc='Logstash inputs receiving every event as Maltrail\'s JSON object: "udp://host:5000" '
                '(a datagram each, best effort) or "tcp://host:5000" (a line each, nothing lost); a bare '
                '"host:port" is UDP. The server sends its login records here too, as Maltrail\'s does',
            maltrail="LOGSTASH_SERVER"),
        "json_output": Key(
            "list", (), form="json_output", split=True,
            doc='ECS-named JSON lines of every event, for Filebeat, Vector or Fluent Bit to ship without a '
                'pipeline (README.md, "ECS JSON output"): "file:///path/events.json" (appended; reopened '
                'when logrotate moves it) or "tcp://host:port" (a line each, nothing lost)'),
        "alert_webhook_url": Key(
            "str", "", form="webhook_url", empty_ok=True, secret=True,
            doc='URL every event of alert_severity or above is POSTed to (chat, paging, a SIEM), '
                '"http://..." or "https://..." (the certificate is always verified); "" for none. '
                'Never printed: a webhook URL often holds its secret', maltrail="ALERT_WEBHOOK_URL"),
        "alert_severity": Key(
            "str", "high", form="severity",
            doc='the lowest severity posted to alert_webhook_url', maltrail="ALERT_SEVERITY"),
        "alert_format": Key(
            "str", "%(json)s", form="alert_format",
            doc='the body posted: %(name)s is replaced by the event\'s field (time, timestamp, sensor, '
                'src_ip, src_port, dst_ip, dst_port, proto, type, trail, info, reference, severity, count; '
                'JSON-escaped), %(json)s by the whole event as Logstash gets it, %% by %',
            maltrail="ALERT_FORMAT"),
        "alert_throttle_s": Key(
            "int", 3600, unit="seconds", min=0, max=604800,
            doc='at most one alert per source address and trail in this many seconds of event time; the '
                'others are counted, not posted; 0 posts every one', maltrail="ALERT_THROTTLE"),
        "alert_ca_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='CA certificates (PEM) that verify an https:// alert_webhook_url; "" for the system\'s'),
        "server_url": Key(
            "str", "", form="feed_url", empty_ok=True,
            doc='our server (`maltrail-engine server`) receiving every event over HTTPS in numbered, '
                'acknowledged batches from the log: "https://host:8338"; "" for none. Loses nothing '
                'through an outage or a restart (Maltrail\'s LOG_SERVER is the UDP one: log_server)'),
        "server_key": Key(
            "str", "", empty_ok=True, secret=True,
            doc='the key `maltrail-engine server sensor add NAME` printed for this sensor (NAME must be '
                'sensor_name). Never printed'),
        "server_ca_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='CA certificates (PEM) that verify an https:// server_url; "" for the system\'s'),
        "server_suppressions_poll_s": Key(
            "int", 60, unit="seconds", min=0, max=86400,
            doc="how often the forwarder asks server_url for the analysts' active suppressions (host, "
                "trail, expiry), merged into the per-host whitelist until they expire; 0 for never"),
        "disable_local_log_storage": Key(
            "bool", False,
            doc='the log directory becomes a spool: a day file (not today\'s) is deleted once every '
                'configured destination has taken all of it. Needs log_server, syslog_server, '
                'logstash_server, json_output or server_url', maltrail="DISABLE_LOCAL_LOG_STORAGE"),
        "console": Key(
            "bool", False,
            doc='also print every event to stderr as it is written, as Maltrail\'s line (coloured by '
                'severity on a terminal unless NO_COLOR is set); the --console flag'),
    },
    # [heuristics] is declared a second time, as workers.heuristics.HeuristicSettings (the workers
    # run on it, and neither package may import the other): a key added, renamed or given a new
    # default here is changed there too, and tests/test_heuristic_settings.py fails until both
    # agree key for key.
    "heuristics": {
        "scan_window_s": Key(
            "int", 30, unit="seconds", min=1, max=3600,
            doc="sliding window of packet time the scan heuristics count in"),
        "port_scan": Key(
            "bool", True,
            doc="TCP port scan: SYN, NULL, FIN and XMAS probes from one source to one target"),
        "port_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a port scan is more than this many distinct ports within the window"),
        "udp_scan": Key(
            "bool", True,
            doc="UDP port scan: small non-DNS datagrams from one sender to one receiver"),
        "udp_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a UDP scan is more than this many distinct ports within the window"),
        "udp_probe_max_bytes": Key(
            "int", 100, unit="bytes", min=0, max=65535,
            doc="larger UDP payloads are traffic (media, QUIC), not probes"),
        "infection_scan": Key(
            "bool", True,
            doc="infection (worm) scan: a local source reaching many hosts on a worm port"),
        "infection_scan_threshold": Key(
            "int", 32, min=1, max=65535,
            doc="an infection scan is more than this many distinct hosts within the window"),
        "infection_ports": Key(
            "ints", (135, 139, 445, 1433, 3389, 6379, 6892, 6893, 6901), min=1, max=65535,
            doc="the worm ports the infection scan watches"),
        "local_networks": Key(
            "list", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128"), form="cidr", split=True,
            doc="networks counted as local (sources of infection scans; no direct-download or data-leakage events towards them)"),
        "web_scan": Key(
            "bool", True,
            doc="web scan: many distinct first path segments from one client to one web server"),
        "web_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a web scan is more than this many distinct first path segments within the window"),
        "nxdomain": Key(
            "bool", True,
            doc="excessive NXDOMAIN answers per name and per parent domain in an hour"),
        "nxdomain_threshold": Key(
            "int", 20, min=1, max=1000000,
            doc="more than this many NXDOMAIN answers in one hour is an event"),
        "dga": Key(
            "bool", True,
            doc="DGA-like names among NXDOMAIN answers"),
        "dga_entropy": Key(
            "float", 3.5, min=0.0, max=8.0,
            doc="a first label with more Shannon entropy than this (bits per character) is DGA-like"),
        "dga_consonants": Key(
            "int", 9, min=1, max=63,
            doc="a first label with more consonants than this is DGA-like"),
        "long_domain": Key(
            "bool", True,
            doc="queries for names whose first label is long and has no hyphen"),
        "long_domain_length": Key(
            "int", 24, min=1, max=63,
            doc="a first label longer than this is long"),
        "dns_exhaustion": Key(
            "bool", True,
            doc="DNS exhaustion: many distinct subdomains of one domain in a short time (tunnels, floods)"),
        "dns_exhaustion_threshold": Key(
            "int", 1000, min=1, max=1000000,
            doc="more than this many distinct subdomains within the window is an event"),
        "dns_exhaustion_window_s": Key(
            "int", 60, unit="seconds", min=1, max=3600,
            doc="the window starts with the first subdomain counted"),
        "dns_answers": Key(
            "bool", True,
            doc="DNS answers pointing at sinkhole or parking trail addresses"),
        "user_agent": Key(
            "bool", True,
            doc="suspicious HTTP user agents (attack tools, exploit payloads)"),
        "http_request": Key(
            "bool", True,
            doc="attack patterns in HTTP paths and bodies (injection, traversal, RCE, XSS, XXE, config files, web shells)"),
        "direct_download": Key(
            "bool", True,
            doc="direct downloads of executables and scripts (.exe .dll .scr .hta .ps1 .msi .apk .elf ...)"),
        "iot_download": Key(
            "bool", True,
            doc="IoT malware downloads: architecture-named files from bare IP hosts"),
        "proxy_probe": Key(
            "bool", True,
            doc="open-proxy probes (absolute-form requests to port 80 naming probe/proxy/echo/check)"),
        "missing_host": Key(
            "bool", False,
            doc="HTTP requests without a Host header", maltrail="CHECK_MISSING_HOST"),
        "http_response": Key(
            "bool", True,
            doc="HTTP responses: sinkhole servers, seized-domain pages, script content types"),
        "forwarded_for": Key(
            "bool", True,
            doc="attribute HTTP request events to the client X-Forwarded-For, CF-Connecting-IP or True-Client-IP names"),
        "max_scan_keys": Key(
            "int", 65536, min=16, max=16777216,
            doc="per worker and scan heuristic: most (source, target) pairs tracked; the least recently seen is evicted"),
        "max_dns_domains": Key(
            "int", 16384, min=16, max=16777216,
            doc="per worker: most domains the DNS exhaustion heuristic tracks"),
        "max_dns_subdomains": Key(
            "int", 262144, min=16, max=67108864,
            doc="per worker: most subdomains the DNS exhaustion heuristic stores in all"),
        "max_nxdomain_names": Key(
            "int", 65536, min=16, max=16777216,
            doc="per worker: most names (and parents) the NXDOMAIN counters track"),
    },
    "server": {
        "http_address": Key(
            "str", "0.0.0.0", form="host",
            doc="address the reporting HTTP server listens on", maltrail="HTTP_ADDRESS"),
        "http_port": Key(
            "int", 8338, min=1, max=65535,
            doc="port the reporting HTTP server listens on", maltrail="HTTP_PORT"),
        "use_ssl": Key(
            "bool", False,
            doc="serve HTTPS instead of HTTP (needs ssl_pem)", maltrail="USE_SSL"),
        "ssl_pem": Key(
            "str", "", form="path", empty_ok=True,
            doc='PEM file holding the TLS private key and certificate; "" for none',
            maltrail="SSL_PEM"),
        "udp_address": Key(
            "str", "0.0.0.0", form="host",
            doc="address the UDP event collector listens on", maltrail="UDP_ADDRESS"),
        "udp_port": Key(
            "int", 8337, min=0, max=65535,
            doc="port the UDP event collector listens on; 0 = off", maltrail="UDP_PORT"),
        "udp_buffer_bytes": Key(
            "int", 64 << 20, unit="bytes", min=65536, max=1 << 30,
            doc="receive buffer of the UDP collector's socket: what absorbs a burst while the store "
                "commits"),
        "udp_backlog_datagrams": Key(
            "int", 1_000_000, min=1000, max=100_000_000,
            doc="most received datagrams waiting for the store; beyond it they are dropped and counted"),
        "udp_secret": Key(
            "str", "", empty_ok=True, secret=True,
            doc='the secret the sensors sign their datagrams with (their log_server_secret, Maltrail\'s '
                'LOG_SERVER_SECRET): when set, only datagrams signed with it ("MTS1 <HMAC>") are taken; '
                '"" takes unsigned ones and refuses signed ones (they cannot be checked). Never printed'),
        "log_dir": Key(
            "str", "/var/log/maltrail-engine-server", form="path",
            doc="directory of the server's store: the daily event logs and their index (index/); "
                "Maltrail's server writes to LOG_DIR, which `config import` carries to [all] log_dir"),
        "users": Key(
            "list", (), form="user_line", secret=True,
            doc='users of the web interface and API, one "name:hash:uid:netfilter" line each (make one with '
                '`maltrail-engine server user add NAME`); hash argon2id, or Maltrail\'s SHA-256 to migrate; '
                'uid >= 1000 only views; netfilter: addresses, CIDRs, a-b ranges, empty for all',
            maltrail="USERS"),
        "enable_mask_custom": Key(
            "bool", True,
            doc='users with uid >= 1000 see "-" for the info of events whose trail is custom',
            maltrail="ENABLE_MASK_CUSTOM"),
        "state_db": Key(
            "str", "", form="path", empty_ok=True,
            doc="the server's own database: sessions, upgraded password hashes, login throttling, sensor keys; "
                "empty: server-state.sqlite in [server] log_dir"),
        "session_idle_timeout_s": Key(
            "int", 3600, unit="seconds", min=60, max=604800,
            doc="a session unused for this long ends"),
        "session_lifetime_s": Key(
            "int", 86400, unit="seconds", min=60, max=2592000,
            doc="a session ends this long after its login, used or not (Maltrail: 24 hours, fixed)"),
        "login_max_failures": Key(
            "int", 5, min=1, max=1000,
            doc="consecutive failed logins from one address, or for one user name, before attempts are refused "
                "unevaluated (Maltrail: 5 per address, fixed)"),
        "login_lockout_s": Key(
            "int", 60, unit="seconds", min=1, max=3600,
            doc="how long attempts are refused after login_max_failures; doubled for each further failure, "
                "at most an hour"),
        "user": Key(
            "str", "maltrail-engine", form="name",
            doc='unprivileged account the server runs as when started as root, once it has bound its sockets '
                'and read ssl_pem; log_dir (and what the server keeps in it) is made to belong to it. "root" '
                'keeps root (without capabilities; not recommended). When the default account does not exist, '
                '"nobody" is used and a notice says so'),
        "header_timeout_s": Key(
            "int", 15, unit="seconds", min=1, max=3600,
            doc="a connection must send a request's complete headers within this long of opening (or of its "
                "last response), or it is closed: slow clients cannot hold the server's connections"),
        "body_timeout_s": Key(
            "int", 30, unit="seconds", min=1, max=3600,
            doc="a request's body must arrive complete within this long after its headers, or the connection "
                "is closed"),
        "max_request_bytes": Key(
            "int", 1048576, unit="bytes", min=1024, max=1073741824,
            doc="largest body the API accepts in one request (login, changes); larger ones get 413"),
        "sensor_silent_after_s": Key(
            "int", 300, unit="seconds", min=1, max=604800,
            doc="a sensor heard from nothing for longer than this is flagged silent in /api/v1/sensors "
                "and /metrics (Maltrail has no such flag)"),
        "live_max_subscribers": Key(
            "int", 64, min=1, max=4096,
            doc="live event streams (GET /api/v1/live, the UI's live mode) open at once; one more is "
                "refused with 503"),
        "metrics_networks": Key(
            "list", ("127.0.0.0/8", "::1"), form="cidr", split=True,
            doc="clients allowed to scrape /metrics (Prometheus, no login); others get 403"),
        "store": Key(
            "str", "sqlite", form="store",
            doc="where the server indexes events: sqlite (embedded, one file per day) or clickhouse "
                "(a shared ClickHouse, for several servers)"),
        "clickhouse_url": Key(
            "str", "http://127.0.0.1:8123", form="clickhouse_url",
            doc="ClickHouse's HTTP interface, when store = clickhouse"),
        "clickhouse_database": Key(
            "str", "maltrail", form="sql_name",
            doc="ClickHouse database holding the events and roll-ups (created if missing)"),
        "clickhouse_user": Key(
            "str", "default", form="sql_name",
            doc="ClickHouse user the server logs in as"),
        "clickhouse_password": Key(
            "str", "", empty_ok=True, secret=True,
            doc='that user\'s password; "" for none. Never printed'),
        "clickhouse_timezone": Key(
            "str", "UTC", form="timezone",
            doc="time zone whose days partition the ClickHouse store (retention drops whole days) "
                "and whose hours and days bucket its counts"),
        "fail2ban_regex": Key(
            "str", "", form="regex", empty_ok=True,
            doc='/fail2ban lists the source address of every event of today whose Maltrail line this regular '
                'expression matches (case-insensitive); "" answers that it is not set',
            maltrail="FAIL2BAN_REGEX"),
        "fail2ban_allowlist": Key(
            "list", (), form="cidr", split=True,
            doc="addresses and CIDRs allowed to fetch /fail2ban without logging in; empty: nobody (the "
                "endpoint is 404 to everyone else); Maltrail's newer FAIL2BAN_ALLOWLIST"),
        "blacklist": Key(
            "list", (), split=False,
            doc='rules for /blacklist, each Maltrail\'s "FIELD ~ REGEX [and FIELD !~ REGEX ...]" (fields src_ip, '
                'src_port, dst_ip, dst_port, protocol, type, trail, filter = the info); an event matching any rule '
                'lists its source address; "NAME: rule" puts a rule in /blacklist/NAME (Maltrail\'s BLACKLIST_NAME)',
            maltrail="BLACKLIST"),
        "blacklist_allowlist": Key(
            "list", (), form="cidr", split=True,
            doc="addresses and CIDRs allowed to fetch /blacklist without logging in; empty: fail2ban_allowlist's; "
                "Maltrail's newer BLACKLIST_ALLOWLIST"),
        "artifact_allowlist": Key(
            "list", ("127.0.0.1", "::1"), form="cidr", split=True,
            doc="addresses and CIDRs of sensors allowed to download the compiled trail artifact "
                "(/trails/artifact, which holds custom trails) without logging in"),
    },
}


def iter_keys() -> Iterator[tuple[str, str, Key]]:
    """Every (section, key, spec) in schema order: the order of the file and of the printer."""
    for section, keys in SCHEMA.items():
        for name, spec in keys.items():
            yield section, name, spec


def _check_schema() -> None:
    # The schema must hold to its own rules: fail at import, not at a user's start.
    for section, key, spec in iter_keys():
        if spec.type not in VALUE_TYPES:
            raise AssertionError("[%s] %s: unknown type %r" % (section, key, spec.type))
        if spec.form is not None and spec.form not in FORMS:
            raise AssertionError("[%s] %s: unknown form %r" % (section, key, spec.form))
        if not key.isidentifier() or keyword.iskeyword(key):  # read as cfg.section.key
            raise AssertionError("[%s] %s: not usable as an attribute name" % (section, key))
        value, problem = spec.rules.check(spec, spec.default)
        if problem or value != spec.default:
            raise AssertionError("default of [%s] %s %s" % (section, key, problem or "changes"))


_check_schema()
