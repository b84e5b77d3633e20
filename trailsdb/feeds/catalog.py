"""Maltrail's public trail feeds, declared as data: one `Feed` entry each.

Owns the list (`FEEDS`): for every feed its name (the name Maltrail's DISABLED_FEEDS uses), URL,
format (the parser in trailsdb/feeds/parsers.py that reads it), the info label and reference its
rows carry, the marker text whose absence means the page is not the feed, whether Maltrail ships
it enabled, and the format's options (which column, which pattern). The facts (URLs, labels,
references, markers, per-format details) are those of Maltrail's trails/feeds/*.py and
maltrail.conf (DISABLED_FEEDS turris, ciarmy, policeman, myip, alienvault); COMPATIBILITY.md
("Trail feeds") lists each one and every difference.

Must not fetch, parse or store anything: it is the table the other modules read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

# The default size cap of one feed's body (after decompression). The largest of Maltrail's feeds
# (URLhaus's full text list, the Onionoo exit relays) are a few MB; 64 MiB leaves room for growth
# and still bounds what a broken or hostile server can make us write to disk.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# A feed name as Maltrail's DISABLED_FEEDS splits them: word characters only.
NAME_RE = re.compile(r"\A[a-z0-9_]+\Z")


@dataclass(frozen=True)
class Feed:
    """One trail feed.

    name:       Maltrail's name for it (its module name), what disabled_feeds lists.
    url:        where it is fetched from.
    format:     the parser that reads it (a key of parsers.PARSERS).
    info:       the label of its rows; "" where the format takes each row's label from the row.
    reference:  the reference its rows carry (Maltrail's __reference__).
    marker:     text the body must contain to be the feed (Maltrail's __check__); None where
                Maltrail checks nothing (the body must then still parse to at least one row).
    enabled:    Maltrail ships it enabled (False: in its default DISABLED_FEEDS).
    options:    the format's parameters for this feed (parsers.py documents each).
    backup_url: a mirror tried when `url` fails (Maltrail's __backup__); "" for none.
    group:      a feed Maltrail fetches from several URLs is declared once per URL, each with
                its own last good copy; disabling the group's name disables all of them.
    max_bytes:  the size cap of its body.
    """

    name: str
    url: str
    format: str
    info: str
    reference: str
    marker: str | None
    enabled: bool = True
    options: dict = field(default_factory=dict)
    backup_url: str = ""
    group: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def names(self) -> tuple[str, ...]:
        """The names that disable this feed: its own and its group's."""
        return (self.name, self.group) if self.group else (self.name,)


def _f(name, url, fmt, info, reference, marker, enabled=True, **options):
    backup = options.pop("backup_url", "")
    group = options.pop("group", "")
    return Feed(name, url, fmt, info, reference, marker, enabled, options, backup, group)


_FIREHOL = "https://raw.githubusercontent.com/firehol/blocklist-ipsets/master/"
_DATAPLANE_LISTS = ("dnsrd", "dnsrdany", "dnsversion", "sipinvitation", "sipquery", "sipregistration",
                    "sshclient", "sshpwauth", "vncrfb")

# Sorted by name, as Maltrail walks trails/feeds/*.py; the order rows are produced in.
FEEDS: tuple[Feed, ...] = (
    _f("abuseipdb", "https://raw.githubusercontent.com/borestad/blocklist-abuseipdb/main/abuseipdb-s100-1d.ipv4",
       "ip_lines", "known attacker", "abuseipdb.com", ".1"),
    # "IP # Reason,..."; Maltrail leaves out the "Scanning" reason (too many false positives).
    _f("alienvault", "https://reputation.alienvault.com/reputation.generic",
       "ip_comment", "bad reputation", "alienvault.com", " # Malicious", enabled=False, skip_reasons=("scanning",)),
    # An HTML table of Atmos panels: the host is the cell before the detail link.
    _f("atmos", "https://cybercrime-tracker.net/ccam.php", "html", "atmos (malware)", "cybercrime-tracker.net",
       "Atmos Strategic Monitoring",
       pattern=r">(?P<trail>[^<>]{1,253}\.[a-zA-Z]{1,63})</td>\s{0,64}<td style=\"background-color: rgb\(11, 11, 11\);\">"
               r"<a href=\"ccamdetail\.php\?hash="),
    _f("badips", "https://www.badips.com/get/list/any/2?age=7d", "ip_lines", "known attacker", "badips.com", ".1",
       backup_url="https://iplists.firehol.org/files/bi_any_2_7d.ipset"),
    _f("binarydefense", "https://www.binarydefense.com/banlist.txt", "ip_lines", "known attacker",
       "binarydefense.com", "ATIF feed"),
    _f("bitcoinnodes", _FIREHOL + "bitcoin_nodes_1d.ipset", "ipset", "bad reputation (bitcoin node)", "bitnodes.io",
       "bitcoin_nodes_1d"),
    # "domain,Family": the label is "<family> (malware)".
    _f("blackbook", "https://raw.githubusercontent.com/stamparm/blackbook/master/blackbook.csv", "csv", "",
       "github.com/stamparm/blackbook", "Malware", trail_column=0, label_column=1, label_format="%s (malware)",
       header="Domain,"),
    _f("blackholemonster", "https://blackhole.monster/blackhole-today", "ip_lines", "known attacker",
       "ip.blackhole.monster", ".1"),
    _f("blocklist", "https://lists.blocklist.de/lists/all.txt", "ip_lines", "known attacker", "blocklist.de", None),
    _f("botscout", _FIREHOL + "botscout_1d.ipset", "ipset", "spammer", "botscout.com", "botscout_1d"),
    # Tab-separated "IP  # last reported  count  id": the address is the first field.
    _f("bruteforceblocker", "http://danger.rulez.sk/projects/bruteforceblocker/blist.php", "ip_lines",
       "known attacker", "rulez.sk", "Last Reported"),
    _f("ciarmy", "http://cinsscore.com/list/ci-badguys.txt", "ip_lines", "known attacker", "cinsscore.com", None,
       enabled=False),
    _f("cleantalk", "https://iplists.firehol.org/files/cleantalk_1d.ipset", "ipset", "spammer", "cleantalk.org",
       "[CleanTalk]"),
    # "ip,port,...,last_seen": ip:port trails of servers seen in the last 120 days.
    _f("cobaltstrike",
       "https://raw.githubusercontent.com/fox-it/cobaltstrike-extraneous-space/master/cobaltstrike-servers.csv",
       "csv", "cobalt strike (adversary)", "github.com/fox-it", "last_seen", trail_column=0, port_column=1,
       date_column=-1, max_age_days=120, header="ip,"),
    _f("cruzit", "https://www.cruzit.com/xxwbl2txt1.php", "ip_lines", "known attacker", "cruzit.com", "ipaddress"),
    # URLs separated by "<br />": each URL, and its host (an address host labelled
    # "potential malware site"); "(SSL)" lines are left out.
    _f("cybercrimetracker", "https://cybercrime-tracker.net/all.php", "urls", "malware", "cybercrime-tracker.net",
       "cp.php?m=login", line_break="<br />", also_host=True, address_host_info="potential malware site",
       skip_containing="(SSL)"),
    # DataPlane.org publishes one pipe-separated list per service: "ASN | AS name | IP | last seen | category".
    *(_f("dataplane_" + kind, "https://dataplane.org/%s.txt" % kind, "pipe", "known attacker", "dataplane.org",
         "DataPlane.org", group="dataplane", address_field=2) for kind in _DATAPLANE_LISTS),
    _f("datashield",
       "https://raw.githubusercontent.com/duggytuxy/Data-Shield_IPv4_Blocklist/refs/heads/main/"
       "prod_data-shield_ipv4_blocklist.txt",
       "ip_lines", "known attacker", "data-shield", ".1",
       backup_url="https://cdn.jsdelivr.net/gh/duggytuxy/Data-Shield_IPv4_Blocklist@main/"
                  "prod_data-shield_ipv4_blocklist.txt"),
    _f("dshieldip", "https://iplists.firehol.org/files/dshield_top_1000.ipset", "ipset", "known attacker",
       "dshield.org", ".1"),
    # Every IPv4 address in the botcc rules.
    _f("emergingthreatsbot", "https://rules.emergingthreats.net/open/suricata/rules/botcc.rules", "suricata",
       "potential malware site", "emergingthreats.net", "CnC Server", mode="addresses"),
    _f("emergingthreatscip", "https://rules.emergingthreats.net/open/suricata/rules/compromised-ips.txt",
       "ip_lines", "compromised (suspicious)", "emergingthreats.net", None),
    # The dns.query / tls.sni content of the CnC DNS query, C2 domain and CnC domain rules.
    _f("emergingthreatsdns", "https://rules.emergingthreats.net/open/suricata/rules/emerging-malware.rules",
       "suricata", "malware", "emergingthreats.net", "Emerging Threats", mode="domains",
       msg_pattern=r"(?i)(CnC DNS Query|C2 Domain|CnC Domain)"),
    _f("fareit", "https://cybercrime-tracker.net/ccpmgate.php", "urls", "fareit (malware)", "cybercrime-tracker.net",
       "/gate.php"),
    _f("gpfcomics", "https://iplists.firehol.org/files/gpf_comics.ipset", "ipset", "known attacker",
       "gpf-comics.com", "comics"),
    _f("greensnow", "https://blocklist.greensnow.co/greensnow.txt", "ip_lines", "known attacker", "greensnow.co",
       ".1"),
    _f("ipnoise", "http://sekuripy.hr/blacklist.txt", "ip_lines", "known attacker", "sekuripy.hr", "ipnoise"),
    # MaxMind's sample page links each address as .../high-risk-ip-sample/<address>.
    _f("maxmind", "https://www.maxmind.com/en/high-risk-ip-sample-list", "html", "bad reputation (suspicious)",
       "maxmind.com", "Sample List of Higher Risk IP Addresses",
       pattern=r"high-risk-ip-sample/(?P<trail>[\d.]+)"),
    _f("minerchk", "https://raw.githubusercontent.com/Hestat/minerchk/master/hostslist.txt", "domains",
       "crypto mining (suspicious)", "github.com/Hestat", ".com"),
    # An Apache .htaccess: "deny from <address>".
    _f("myip", "https://myip.ms/files/blacklist/htaccess/latest_blacklist.txt", "htaccess", "crawler", "myip.ms",
       "ADDRESSES DATABASE", enabled=False),
    _f("openphish", "https://openphish.com/feed.txt", "urls", "phishing", "openphish.com", "http://",
       strip_slash=True),
    _f("policeman", "https://raw.githubusercontent.com/futpib/policeman-rulesets/master/examples/"
       "simple_domains_blacklist.txt", "domains", "malware", "malwaredomains.com", "malwaredomains.com",
       enabled=False, exclude=("api.ipify.org",)),
    _f("proxylists", _FIREHOL + "proxylists_1d.ipset", "ipset", "proxy (suspicious)", "proxylists.net",
       "proxylists_1d"),
    _f("proxyspy", _FIREHOL + "proxyspy_1d.ipset", "ipset", "proxy (suspicious)", "spys.ru", "proxyspy_1d"),
    _f("rutgers", "https://report.cs.rutgers.edu/DROP/attackers", "ip_lines", "known attacker", "rutgers.edu", ".1"),
    _f("sblam", "https://sblam.com/blacklist.txt", "ip_lines", "bad reputation (suspicious)", "sblam.com",
       "HTTP spam sources"),
    _f("scriptzteam", "https://raw.githubusercontent.com/scriptzteam/badIPS/main/ips.txt", "ip_lines",
       "bad reputation", "github.com/scriptzteam/badIPS", ".1"),
    _f("socksproxy", _FIREHOL + "socks_proxy_7d.ipset", "ipset", "proxy (suspicious)", "socks-proxy.net",
       "socks_proxy_7d"),
    # Suricata rules "... any -> [IP] PORT (msg:"... likely FAMILY C&C" ...)": IP:PORT trails
    # labelled "<family> (malware)" ("generic (malware)" for the family "malware").
    _f("sslbl", "https://sslbl.abuse.ch/blacklist/sslipblacklist.rules", "suricata", "", "abuse.ch",
       "abuse.ch SSLBL", mode="ipport"),
    # "Listingdate,SHA1,Listingreason": SHA-1 fingerprints of C2 server certificates, as
    # "sha1:<40 hex>" trails labelled "<family> c2 certificate (suspicious)".
    _f("sslblcert", "https://sslbl.abuse.ch/blacklist/sslblacklist.csv", "sslbl_cert", "", "abuse.ch",
       "SSL Certificate Blacklist"),
    _f("sslproxies", _FIREHOL + "sslproxies_1d.ipset", "ipset", "proxy (suspicious)", "sslproxies.org",
       "sslproxies_1d"),
    _f("talosintelligence", "https://www.talosintelligence.com/documents/ip-blacklist", "ip_lines",
       "bad reputation", "talosintelligence.com", ".1"),
    # Tor exit relays from Onionoo's JSON (Maltrail reads TorBulkExitList's plain list; Onionoo
    # also names IPv6 exits): COMPATIBILITY.md.
    _f("torproject", "https://onionoo.torproject.org/details?search=flag:exit&fields=or_addresses,exit_addresses",
       "json_tor", "tor exit node (suspicious)", "torproject.org", "relays_published"),
    # Turris greylist CSV "Address,Tags": the address only.
    _f("turris", "https://view.sentinel.turris.cz/greylist-data/greylist-latest.csv", "csv", "bad reputation",
       "turris.cz", ".1", enabled=False, trail_column=0, header="Address,"),
    # URLhaus: one URL per line (only lines starting with http).
    _f("urlhaus", "https://urlhaus.abuse.ch/downloads/text/", "urls", "malware", "abuse.ch", "URLhaus",
       require_scheme=True),
    # "Family,URL,IP,FirstSeen": the panel's location (the URL without its query, its last path
    # segment and a trailing /panel or /webpanel part), labelled with the family.
    _f("viriback", "http://tracker.viriback.com/dump.php", "csv", "", "viriback.com", "Family,URL,IP,FirstSeen",
       trail_column=1, label_column=0, url_trail="panel", header="Family,URL,IP,FirstSeen"),
    _f("vxvault", "http://vxvault.net/URL_List.php", "urls", "malware", "vxvault.net", "VX Vault",
       require_scheme=True),
)

# Maltrail feeds deliberately not declared, with the reason (COMPATIBILITY.md lists them).
NOT_CARRIED: dict[str, str] = {
    "feodotrackerip": "dropped by Maltrail itself",
    "palevotracker": "the service is retired (its host serves no list)",
    "ransomwaretrackerdns": "the service is retired (its host serves no list)",
    "ransomwaretrackerip": "the service is retired (its host serves no list)",
    "ransomwaretrackerurl": "the service is retired (its host serves no list)",
    "zeustrackermonitor": "the service is retired (its host serves no list)",
    "zeustrackerurl": "the service is retired (its host serves no list)",
    "trickbot": "two fetches (a GitHub directory page, then the newest configuration it names), which a "
                "declared entry does not express; its source is an archive of old configurations",
}


def feed_names() -> set[str]:
    """Every name disabled_feeds may list: the feeds' names and their groups'."""
    return {n for feed in FEEDS for n in feed.names()}


def custom_url_feeds(urls: Iterable[str]) -> list[Feed]:
    """Maltrail's CUSTOM_TRAILS_URL as feeds: one each, in the given order, info "blacklisted",
    reference "(remote custom)", read with Maltrail's custom-list line rules; a URL without a
    scheme is http:// (as Maltrail does). Names are custom_url, custom_url_2, ..."""
    out = []
    for index, url in enumerate(u.strip() for u in urls if u.strip()):
        if "//" not in url:
            url = "http://" + url
        name = "custom_url" if index == 0 else "custom_url_%d" % (index + 1)
        out.append(Feed(name, url, "custom", "blacklisted", "(remote custom)", None))
    return out
