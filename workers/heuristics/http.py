"""HTTP heuristics: suspicious requests (user agents, attack patterns, downloads, IoT malware,
proxy probes) and responses (sinkhole servers, seized-domain pages, script content types).

Owns the pattern lists and the judgement; every verdict is (event type, trail, info), rendered the
way Maltrail renders it. The lists are this project's own. The C scan decides which requests and
responses reach this module with cheap literal checks (`REQUEST_NEEDLES`, `RESPONSE_NEEDLES`,
`suspicious user agents`, the download extensions): every pattern below contains one of those
literals, which tests/test_heuristics.py checks over examples of each.

Must not build events or hold state (the web scan lives in scan.py).
"""

from __future__ import annotations

import ipaddress
import re

from workers.http import decoded_form, decoded_target

# -- user agents ---------------------------------------------------------------------------------
# Substrings (lower case) of the user agents of attack tools and scanners, and of exploit payloads
# sent in the User-Agent header.
SUSPICIOUS_USER_AGENTS = (
    "sqlmap", "nikto", "nmap scripting engine", "nmap nse", "masscan", "zgrab", "zmap", "nessus",
    "openvas", "acunetix", "netsparker", "w3af", "dirbuster", "gobuster", "wfuzz", "fuzz faster u fool",
    "nuclei", "hydra", "havij", "whatweb", "wpscan", "joomscan", "commix", "arachni", "skipfish",
    "paros", "webinspect", "appscan", "dotdotpwn", "fimap", "bsqlbf", "pangolin", "jorgee", "zmeu",
    "morfeus", "muieblackcat", "brutus", "grabber", "metasploit", "x-scan", "internet-scanner",
    "masscan-ng", "l9explore", "l9tcpid", "xenu", "censysinspect", "() {", "${jndi:", "<script",
    "union select", "/etc/passwd",
)
# An update agent of a security product that happens to contain one of the above.
WHITELIST_USER_AGENTS = ("sophos", "symantec", "antivir", "avgsetup", "microsoft-cryptoapi",
                         "internal dummy connection", "tmsps", "sdds")

# -- requests --------------------------------------------------------------------------------------
# (description, pattern) in the order they are tried; matched case-insensitively against each
# decoded reading of the path (then of the body): percent-decoded, and form-decoded ('+' is a space
# in a query and a form body, workers/http.py decoded_target / decoded_form). The first family one
# reading matches names the request. The families come in the order of Maltrail's
# SUSPICIOUS_HTTP_REQUEST_REGEXES (sql, xml, php, ldap, xss, xxe, data leakage, config file, remote
# code execution, directory traversal, web scan, dns changer; web shell is ours), so a request that
# matches several gets the label Maltrail's order gives: "cmd=;cat /etc/passwd" and
# ".../system32/cmd.exe?/c+dir" run a command, which matters more than the file they name.
_W = r"[ \t\n\r\x0b\x0c]"  # ASCII whitespace only: every kind of it is a needle below
REQUEST_PATTERNS = (
    ("potential sql injection", "|".join((
        r"\bunion%s+(?:all%s+|distinct%s+)?select\b" % (_W, _W, _W),
        r"\bselect%s+(?:[\w*.`\"()]+%s*,%s*)*[\w*.`\"()]+%s+from%s+[\w`\"\[]" % (_W, _W, _W, _W, _W),
        r"\binformation_schema\b", r"\bsys(?:objects|databases|users|columns)\b",
        r"['\"]%s*(?:or|and)%s+['\"]?\w+['\"]?%s*(?:=|like\b)" % (_W, _W, _W),
        r"\b(?:or|and)%s+\d+%s*=%s*\d+\b" % (_W, _W, _W),
        r"\b(?:sleep|benchmark|pg_sleep)%s*\(%s*\d" % (_W, _W), r"\bwaitfor%s+delay\b" % _W,
        r"\b(?:updatexml|extractvalue)%s*\(" % _W, r"\border%s+by%s+\d+%s*(?:--|#)" % (_W, _W, _W),
        r"\bconcat(?:_ws)?%s*\(%s*0x[0-9a-f]" % (_W, _W), r"\binto%s+(?:out|dump)file\b" % _W,
        r"@@(?:version|datadir|hostname)\b", r"\bload_file%s*\(" % _W,
        r"\bcast%s*\([^)]*%s+as%s+(?:n?var)?char\b" % (_W, _W, _W)))),
    ("potential xml injection", r"/text\(\)%s*=|'%s*\]%s*\|%s*//" % (_W, _W, _W, _W)),
    ("potential php injection", r"<\?(?:php\b|=)|\bphp://(?:input|filter|expect)\b|\bdata://text/plain;base64,"),
    ("potential ldap injection", r"\(%s*[|&]%s*\(%s*\w+%s*=%s*\*|\*\)%s*\(%s*[|&]" % ((_W,) * 7)),
    ("potential xss injection", "|".join((
        r"<%s*script\b" % _W, r"\bjavascript%s*:" % _W, r"<%s*(?:svg|img|iframe|body|video|details)\b[^>]*\bon\w+%s*=" % (_W, _W),
        r"\bon(?:error|load|mouseover|focus|click|mouseenter|toggle)%s*=[^&]*\(" % _W,
        r"\b(?:alert|confirm|prompt)%s*\(" % _W, r"\bdocument\.(?:cookie|domain|write)\b"))),
    ("potential xxe injection", r"<!entity\b|<!doctype%s+\w+%s*\[" % (_W, _W)),
    ("potential data leakage", r"\bim[es]i=\d{15}\b|\b(?:mac|sid)=(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}\b"),
    ("config file access", "|".join((
        r"\.ht(?:access|passwd|digest)\b", r"\bwp-config\.php", r"/\.env(?:$|[/?.])", r"/\.git/(?:config|head|index)\b",
        r"/\.svn/(?:entries|wc\.db)\b", r"\bweb\.config\b", r"/\.aws/credentials\b", r"/\.ssh/(?:id_[a-z0-9]+|authorized_keys)\b"))),
    ("potential remote code execution", "|".join((
        r"\$_(?:request|get|post|cookie|server)\[", r"\bxp_cmdshell\b", r"\b(?:shell_exec|passthru|proc_open|popen)%s*\(" % _W,
        r"\b(?:wget|curl)%s+(?:-\S+%s+)*(?:https?|ftp):/" % (_W, _W), r"\btftp%s+-" % _W,
        r"\bnc(?:at)?%s+(?:-\S+%s+)*-[el]\b" % (_W, _W), r"/bin/(?:ba|z|da)?sh\b",
        # cmd.exe with its /c or /k switch, also passed as a CGI query (IIS: "cmd.exe?/c+dir"), and
        # cmd.exe fetched from system32 through the web server (the IIS traversal worms)
        r"\bcmd(?:\.exe)?(?:%s|\?)*/[ck]\b" % _W, r"[/\\]system32[/\\]+cmd\.exe\b",
        # a command as a parameter's whole value ("cmd=cat /etc/passwd", "ip=ping -c 3 host")
        r"\b(?:cat|ls)%s+/" % _W, r"\bping(?:\.exe)?%s+-[nc]%s*\d" % (_W, _W),
        r"\bpowershell(?:\.exe)?\b.{0,40}%s-(?:enc|e|c|command)\b" % _W,
        r"(?:[;|`]|&&|\$\()%s*(?:cat|ls|id|uname|whoami|ifconfig|echo|ping|nslookup|sleep|rm)(?:%s|$)" % (_W, _W),
        r"\bchmod%s+(?:\+x|[0-7]{3,4})\b" % _W, r"\$\{ifs\}", r"\$\{jndi:", r"\(\)%s*\{%s*:;%s*\}" % (_W, _W, _W),
        r">%s*/dev/null" % _W, r"2>&1", r"\bsh%s+/tmp/" % _W, r"\bbase64%s+-d\b" % _W,
        r"\b(?:eval|assert|system)%s*\(%s*(?:base64_decode|\$_|chr%s*\()" % (_W, _W, _W)))),
    ("potential directory traversal", "|".join((
        r"(?:\.{2,}[/\\]+){3,}", r"/etc/(?:passwd|shadow|group|hosts|issue|hostname)\b",
        r"[/\\](?:boot|win|system)\.ini\b", r"[/\\]system32\b", r"%systemroot%", r"%2e%2e[/\\%]"))),
    ("potential web shell", r"\b(?:c99|r57|wso|b374k|indoxploit|alfa_?shell)\w*\.php\b|\.(?:php|aspx?|jsp)\?(?:cmd|exec|command)="),
    ("potential web scan", "|".join((
        r"acunetix", r"netsparker", r"\bwvs_", r"w00tw00t", r"muieblackcat", r"\bzmeu\b", r"vega-inject", r"owasp[%_ ]?zap",
        r"\bbxss\.me\b", r"inexistent", r"thishouldnotexist", r"\bnikto\b", r"\bdirbuster\b"))),
    ("potential dns changer", r"\b(?:dnsserver[12]?|dns[12]|wan_dns[12]?|dnsprimary|dnssecondary|pri_?dns|sec_?dns|"
                              r"dhcppridns|dhcpsecdns|staticpridns|staticsecdns)="),
)
_REQUEST = tuple((desc, re.compile(pattern, re.I | re.S)) for desc, pattern in REQUEST_PATTERNS)
# Literals (lower case) one of which every request pattern above needs: the C scan sends a request
# to these checks only when its decoded path or body contains one.
REQUEST_NEEDLES = (
    " ", "\t", "\n", "\r", "\x0b", "\x0c", "'", "\"", "<", ">", "(", ";", "|", "`", "$", "..", "\\", "@@",
    "/etc/", ".ini", "system32", "%systemroot", "%2e", ".ht", "wp-config", "/.env", "/.git/", "/.svn/",
    "web.config", "/.aws/", "/.ssh/", "imei=", "imsi=", "mac=", "sid=", "php://", "data://", "/bin/",
    "2>&1", "&&", ".php", "acunetix", "netsparker", "wvs_", "w00tw00t", "muieblackcat", "zmeu", "vega-inject",
    "zap", "bxss.me", "inexistent", "thishouldnotexist", "nikto", "dirbuster", "dns", "sql", "information_schema",
    "sys", "cmd", "exec=", "command=", "<!", "/text()", "javascript", "document.",
)
# Paths whose query languages look like SQL (Facebook FQL, Yahoo YQL), ad servers, and relative
# references into asset directories: never judged as attacks.
WHITELIST_REQUEST_PATHS = re.compile(r"(?:^|/)(?:fql|yql|ads|gwx)(?:[/?]|$)|\.\./(?:images|themes|design|scripts|assets|"
                                     r"core|js|css|img|fonts)/")
# Characters a trail shows percent-encoded so the event line stays one field.
_FORCE_ENCODE = (("(", "%28"), (" ", "%20"), (")", "%29"), ("\r", "%0D"), ("\n", "%0A"))

# -- downloads -------------------------------------------------------------------------------------
DOWNLOAD_EXTENSIONS = (".apk", ".bat", ".chm", ".cpl", ".dll", ".elf", ".exe", ".hta", ".hwp", ".jar",
                       ".jse", ".lnk", ".msi", ".pif", ".ps1", ".scr", ".sct", ".vbe", ".vbs", ".wsf",
                       ".xpi")
WHITELIST_DOWNLOAD_PATHS = ("cgi", "/scripts/", "/_vti_bin/", "/bin/", "/pub/softpaq/", "/bios/", "/pc-axis/")
# File names that are a web server's own probes or leftovers rather than content.
SUSPICIOUS_FILENAMES = (("non-existent page", re.compile(r"defaultwebpage\.cgi", re.I)),)
# A file named after a CPU architecture, fetched from a bare IP address: IoT botnet droppers.
IOT_PATH = re.compile(r"\A[\w./-]*/[\w.-]*\b(?:arm(?:v?\d+\w*)?|aarch64|mips(?:el)?|mpsl|m68k|ppc|powerpc|sh4|"
                      r"spc|sparc|x86(?:_64)?|i[3-6]86|arc|exploit|root)\Z", re.I)
_BARE_IPV4 = re.compile(r"\A\d+\.[0-9.]+\Z")
PROXY_PROBE_WORDS = ("probe", "proxy", "echo", "check")

# -- responses -------------------------------------------------------------------------------------
SINKHOLE_RESPONSE = re.compile(
    r"^(?:x-sinkhole|server)%s*:%s*(?:malware-?)?sinkhole\b|\bsinkholed? by\b|^x-(?:sinkholed?(?:-domain)?|zinkhole)%s*:|"
    r"\ba malware sinkhole\b|\bsinkhole(?: project)?</title>|\bthis is a sinkhole\b|\bbots party hard\b|"
    r"^set-cookie%s*:%s*snkz=|^server%s*:%s*apache [0-9.]+/sinksoft|^location:[^\n]+\.sinkdns\.org\b" % ((_W,) * 7),
    re.I | re.M)
SEIZED_TITLE = re.compile(r"domain (?:name )?has been seized|domain seiz(?:ed|ure)|seized by (?:the )?(?:fbi|europol|"
                          r"police|u\.?s\.?)", re.I)
SUSPICIOUS_CONTENT_TYPES = ("application/vnd.ms-htmlhelp", "application/x-bsh", "application/x-chm", "application/x-sh",
                            "application/x-shellscript", "application/hta", "text/x-scriptlet", "text/x-sh",
                            "text/x-shellscript")
RESPONSE_NEEDLES = ("sinkhole", "zinkhole", "snkz=", "sinksoft", "sinkdns", "party hard", "seiz") + SUSPICIOUS_CONTENT_TYPES
RESPONSE_HEAD_BYTES = 2000

FORWARDED_HEADERS = ("x-forwarded-for", "cf-connecting-ip", "true-client-ip")


def user_agent_pattern(user_agent: str) -> str | None:
    """The suspicious pattern a user agent contains (first in list order), unless whitelisted."""
    low = user_agent.lower()
    if any(w in low for w in WHITELIST_USER_AGENTS):
        return None
    for pattern in SUSPICIOUS_USER_AGENTS:
        if pattern in low:
            return pattern
    return None


def force_encode(text: str) -> str:
    for char, code in _FORCE_ENCODE:
        text = text.replace(char, code)
    return text


def request_attack(*texts: str) -> str | None:
    """The first family (in REQUEST_PATTERNS' order) whose pattern one of the decoded readings of a
    path or body matches (workers/http.py decoded_target / decoded_form), or None. A reading
    without a needle is never searched."""
    texts = tuple(t for t in texts if any(n in t.lower() for n in REQUEST_NEEDLES))
    if not texts:
        return None
    for desc, pattern in _REQUEST:
        if any(pattern.search(t) for t in texts):
            return desc
    return None


def needs_request_check(path: str, body: str | None) -> bool:
    """What the C scan decides: a decoded reading of the path or body contains a request needle."""
    texts = decoded_target(path) + (decoded_form(body) if body else ())
    return any(n in t.lower() for t in texts for n in REQUEST_NEEDLES)


def is_bare_ipv4(host: str) -> bool:
    return _BARE_IPV4.match(host) is not None


def download_extension(path: str) -> str | None:
    """The suspicious extension of the file a request path names (query left out), or None."""
    name = path.split("?", 1)[0].rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    if dot <= 0:
        return None
    ext = name[dot:]
    return ext if ext in DOWNLOAD_EXTENSIONS else None


def forwarded_source(headers: dict) -> str | None:
    """The original client a proxy names (the first address of X-Forwarded-For and kin)."""
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        first = value.split(",", 1)[0].strip()
        if first.startswith("[") and "]" in first:
            first = first[1:first.index("]")]
        elif first.count(":") == 1:
            first = first.split(":", 1)[0]
        try:
            return str(ipaddress.ip_address(first))
        except ValueError:
            continue
    return None


def response_verdicts(payload: bytes) -> list[tuple[str, str]]:
    """(trail, info) pairs for an HTTP response head (at most RESPONSE_HEAD_BYTES)."""
    text = payload[:RESPONSE_HEAD_BYTES].decode("latin-1")
    out = []
    match = SINKHOLE_RESPONSE.search(text)
    if match:
        out.append((match.group(0), "sinkhole response (malware)"))
    else:
        start = text.lower().find("<title>")
        if start >= 0:
            end = text.lower().find("</title>", start)
            title = text[start + 7:end if end >= 0 else len(text)]
            if SEIZED_TITLE.search(title):
                out.append((title, "seized domain (suspicious)"))
    low = text.lower()
    at = low.find("\r\ncontent-type:")
    if at >= 0:
        end = low.find("\r\n", at + 15)
        if end >= 0:
            content_type = low[at + 15:end].strip()
            if content_type in SUSPICIOUS_CONTENT_TYPES:
                out.append((content_type, "content type (suspicious)"))
    return out


def needs_response_check(payload: bytes) -> bool:
    """What the C scan decides: an HTTP response whose head holds a response needle."""
    if not payload.startswith(b"HTTP/"):
        return False
    low = payload[:RESPONSE_HEAD_BYTES].lower()
    return any(n.encode() in low for n in RESPONSE_NEEDLES)
