"""`maltrail-engine config import maltrail.conf`: Maltrail's configuration as the equivalent
maltrail.toml.

Owns reading Maltrail's maltrail.conf the way Maltrail's core/settings.py reads it (`NAME value`
lines; `#` starts a comment; a line holding one bare word opens a list whose items are the
indented lines under it; names starting USE_, SET_, CHECK_, ENABLE_, SHOW_ or DISABLE_ are
switches, true when the value is 1 or true; a value of digits is a number; `$NAME` is replaced by
Maltrail's own value of that name, else by the environment's; a later line for the same name wins),
the table of every Maltrail option with the key of ours that stands for it (the `maltrail=` names
in config.SCHEMA) or the reason none does, and writing the result as a maltrail.toml that
config loads.

Maltrail's MALTRAIL_<NAME> environment overrides are not applied: they belong to the process that
ran Maltrail, not to its file.

Must not: start anything, write over an existing file unless told to (`force`), or write a file
that our loader would refuse (the result is loaded before it is put in place). A value our
schema refuses is an error naming the maltrail.conf line, never silently dropped.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from config import (
    COMMAND_LINE, SCHEMA, ConfigError, apply_overrides, check_value, comment_text, iter_keys, load_config,
    toml_value,
)

__all__ = ["ConfImportError", "ImportResult", "MALTRAIL_ONLY", "import_conf", "read_maltrail_conf", "write_toml"]

# Maltrail's options that no key of ours stands for, with the reason (every option of Maltrail's
# maltrail.conf and core/settings.py; the others are the `maltrail=` names in SCHEMA).
_SERVER_LATER = "maltrail-engine's server (web interface) is a later release"
_OWN_FEEDS = ("each maltrail-engine sensor fetches the feeds itself (`maltrail-engine trails update`, "
              "[all] feed_updates); to hand one host's trails to others, copy its [all] trails_artifact, "
              "or point their [all] custom_trails_url at a list you publish")
MALTRAIL_ONLY: dict[str, str] = {
    "IP_ALIASES": "a setting of Maltrail's web interface: " + _SERVER_LATER,
    "HEADER_LOGO": "a setting of Maltrail's web interface: " + _SERVER_LATER,
    "USE_SERVER_UPDATE_TRAILS": "Maltrail's server handing trails to sensors: " + _SERVER_LATER + "; " + _OWN_FEEDS,
    "UPDATE_SERVER": "Maltrail's sensors pulling a trails.csv from its server: " + _OWN_FEEDS + "; a "
                     "maltrail-engine server hands its signed artifact to [sensor] update_server",
    "DISABLE_CPU_AFFINITY": "maltrail-engine always pins its capture process to one CPU; there is no switch",
    "CHECK_HOST_DOMAINS": "always on here: the Host of every HTTP request is checked against domain trails "
                          "(COMPATIBILITY.md, difference 10)",
    "SHOW_DEBUG": "no debug switch; statistics are printed every [sensor] stats_interval_s",
    "DISABLE_CHECK_SUDO": "capture privileges are checked, not assumed: root, or CAP_NET_RAW "
                          "(`maltrail-engine check-config` says which the sensor has)",
    "USE_MULTIPROCESSING": "replaced by PROCESS_COUNT in Maltrail itself",
}

# Maltrail's own values for `$NAME` in a value (core/settings.py globals), as this host has them;
# $HOSTNAME and $CPU_CORES mean "whatever the host has" and map to our words for that where a key
# has one (SENSOR_NAME, PROCESS_COUNT below).
_SYSTEM_LOG_DIR = "/var/log"
_VARIABLE_RE = re.compile(r"\$([A-Z0-9_]+)")
# Names whose values Maltrail reads as switches (core/settings.py: value in ("1", "true")).
_SWITCH_PREFIXES = ("USE_", "SET_", "CHECK_", "ENABLE_", "SHOW_", "DISABLE_")
# Maltrail's shipped CAPTURE_FILTER; our "default" filter does the same job (keeps what detection
# looks at, leaves bulk TCP in the kernel) and also keeps TLS handshakes on any port.
_MALTRAIL_DEFAULT_FILTER = ("udp or icmp or (tcp and (tcp[tcpflags] == tcp-syn or port 80 or port 1080 or "
                            "port 3128 or port 8000 or port 8080 or port 8118))")
# CAPTURE_BUFFER: bytes, or "<n>KB/MB/GB" (powers of 1024), or "<n>%" of physical memory.
_SIZE_RE = re.compile(r"^(\d+)\s*([kKmMgG])[bB]$")
_SIZE_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


class ConfImportError(Exception):
    """The maltrail.conf cannot be carried over; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Option:
    """One maltrail.conf option as Maltrail reads it."""

    name: str
    value: Any            # str, int, bool, or a list of str (a bare-word list)
    text: str             # the value as written
    line: int


@dataclass
class Carried:
    """One of our keys set from a Maltrail option."""

    section: str
    key: str
    value: Any
    source: str           # "LOG_DIR (line 12)", or why the key is set though the option is absent
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    source: str
    carried: list[Carried]
    not_applicable: list[tuple[str, int, str]]     # (option, line, reason)
    unknown: list[tuple[str, int]]                  # (option, line)
    notes: list[str]                                # about the file as a whole
    toml: str = ""


def _substitute(value: str, conf_dir: str, notes: list[str]) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1)
        known = {"HOSTNAME": socket.gethostname(), "SYSTEM_LOG_DIR": _SYSTEM_LOG_DIR,
                 "CPU_CORES": str(os.cpu_count() or 1), "ROOT_DIR": conf_dir}
        if name in known:
            if name in ("HOSTNAME", "CPU_CORES"):
                notes.append("$%s is this host's (%s)" % (name, known[name]))
            return known[name]
        if name in os.environ:  # as Maltrail does: the environment, then the text as it is
            notes.append("$%s taken from the environment of this import" % name)
            return os.environ[name]
        return match.group(0)
    return _VARIABLE_RE.sub(one, value)


def read_maltrail_conf(text: str, source: str) -> tuple[dict[str, Option], list[str]]:
    """The options of a maltrail.conf text by name (a later line wins) and notes about it;
    raises ConfImportError for a line Maltrail itself would refuse."""
    options: dict[str, Option] = {}
    notes: list[str] = []
    problems: list[str] = []
    current_list: Option | None = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = re.sub(r"\s*#.*", "", raw.rstrip("\r"))
        if not line.strip():
            continue
        if line.count(" ") == 0:  # one bare word: a list's name (USERS, IP_ALIASES, BLACKLIST)
            if re.search(r"\W", line):
                problems.append("%s:%d: %r is neither `NAME value` (with a space) nor a list's name; Maltrail "
                                "refuses it too" % (source, number, line[:80]))
                continue
            current_list = options[line.upper()] = Option(line.upper(), [], "", number)
            continue
        if current_list is not None and line.startswith(" "):
            current_list.value.append(line.strip())
            continue
        current_list = None
        name, _, value = line.strip().partition(" ")
        name, value = name.strip().upper(), value.strip().strip("'\"").strip()
        if name in options:
            notes.append("%s is set twice (lines %d and %d); the later value is used, as Maltrail does"
                         % (name, options[name].line, number))
        if name.startswith(_SWITCH_PREFIXES):
            typed: Any = value.lower() in ("1", "true")
        elif value.isdigit() and value.isascii():
            typed = int(value)
        else:
            typed = value
        options[name] = Option(name, typed, value, number)
    if problems:
        raise ConfImportError(problems)
    return options, notes


def _resolve(path: str, conf_dir: str, notes: list[str]) -> str:
    # Maltrail resolves *_DIR options against its installation directory and opens other relative
    # paths from its working directory, which for a service is that same directory; the
    # directory of maltrail.conf stands for it here.
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    resolved = os.path.normpath(os.path.join(conf_dir, expanded))
    notes.append("the relative path %r is taken from maltrail.conf's directory: %s" % (path, resolved))
    return resolved


def _convert(option: Option, section: str, key: str, conf_dir: str, notes: list[str]) -> tuple[Any, str | None]:
    """(value for [section] key, None), or (None, why it cannot be carried over); `notes` says
    what was interpreted."""
    name, value = option.name, option.value
    spec = SCHEMA[section][key]
    if name == "USERS":
        if not isinstance(value, list):
            return None, "is not a list of user lines"
        # Maltrail removes every space from a line before reading it.
        if any(len(line.split(":", 3)) > 1 and re.fullmatch(r"[0-9a-fA-F]{64}", line.split(":", 3)[1].strip())
               for line in value):
            notes.append("SHA-256 hashes are accepted only over TLS or from loopback, and replaced by argon2id at "
                         "the first login (README, \"Server users\")")
        return ["".join(line.split()) for line in value], None
    if name == "BLACKLIST":     # a list of rules, one a line, taken as they are ([server] blacklist)
        if not isinstance(value, list):
            return None, "is not a list of rules"
        return [line.strip() for line in value if line.strip()], None
    if isinstance(value, list):
        return None, "is a list of lines; a single value is expected"
    if name == "PROCESS_COUNT":
        if value in ("$CPU_CORES", 0, ""):
            notes.append('one worker per CPU core: "auto" (one per CPU but the one capture takes)')
            return "auto", None
    if name == "SENSOR_NAME" and value == "$HOSTNAME":
        notes.append('"" is the host name, at run time, as $HOSTNAME is')
        return "", None
    if name == "CAPTURE_BUFFER":
        return _capture_buffer(option, notes)
    if name == "DISABLED_FEEDS":
        # Maltrail splits the value at anything but word characters ("turris, ciarmy").
        return [part.lower() for part in re.split(r"[^\w]+", str(value)) if part], None
    if name == "CUSTOM_TRAILS_URL":
        # Maltrail splits at ';' and ',' and takes a URL without a scheme as http://.
        urls = [part.strip() for part in re.split(r"[;,]", str(value)) if part.strip()]
        if any("//" not in url for url in urls):
            notes.append("a URL without a scheme is taken as http://, as Maltrail does")
        return [url if "//" in url else "http://" + url for url in urls], None
    if isinstance(value, str):
        value = _substitute(value, conf_dir, notes)
    if name == "CAPTURE_FILTER" and " ".join(str(value).split()) == _MALTRAIL_DEFAULT_FILTER:
        notes.append('Maltrail\'s shipped filter; our "default" does its job and keeps TLS handshakes on any '
                     'port as well')
        return "default", None
    if name == "IGNORE_EVENTS_REGEX" and value:
        notes.append("(?i) added: Maltrail searches case-insensitively")
        value = "(?i)" + str(value)
    if name == "ALERT_SEVERITY":
        # Maltrail lower-cases it and takes anything else for "high" (core/alert.py wanted()).
        value = str(value).strip().lower()
        if value not in ("low", "medium", "high"):
            notes.append("%r is none of low, medium, high: Maltrail alerts on high then, and so does this" % option.text)
            value = "high"
    if spec.type == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true"), None
    if spec.type == "int" and not isinstance(value, int):
        return None, "is not a whole number"
    if spec.type == "str" and not isinstance(value, str):
        value = str(value)
    if spec.form == "path" and value:
        value = (_resolve(value, conf_dir, notes) if spec.type == "str"
                 else [_resolve(part.strip(), conf_dir, notes) for part in str(value).split(",")])
    return value, None


def _capture_buffer(option: Option, notes: list[str]) -> tuple[Any, str | None]:
    text = option.text
    sized = _SIZE_RE.match(text)
    if text.isascii() and text.isdigit():
        size = int(text)
    elif sized:
        size = int(sized.group(1)) * _SIZE_UNITS[sized.group(2).upper()]
    elif re.match(r"^\d+%$", text):
        notes.append("Maltrail sizes its user-space ring as %s of memory; our kernel capture buffer keeps its "
                     "default, and the rings between processes are [sensor] ring_bytes" % text)
        return None, None
    else:
        return None, "is not a size (bytes, or a number with KB, MB or GB, or a percentage)"
    notes.append("Maltrail's CAPTURE_BUFFER sizes its user-space ring; here it sizes the kernel capture buffer "
                 "of each interface")
    return size, None


def import_conf(path: str) -> ImportResult:
    """Read the maltrail.conf at `path` and work out the equivalent configuration; raises
    ConfImportError naming every option that cannot be carried over."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        raise ConfImportError(["%s: cannot read: %s" % (path, exc.strerror or exc)]) from None
    conf_dir = os.path.dirname(os.path.abspath(path))
    options, notes = read_maltrail_conf(text, path)
    ours = {spec.maltrail: (section, key) for section, key, spec in iter_keys() if spec.maltrail}
    result = ImportResult(path, [], [], [], notes)
    problems = []
    for option in sorted(options.values(), key=lambda o: o.line):
        if option.name in MALTRAIL_ONLY:
            result.not_applicable.append((option.name, option.line, MALTRAIL_ONLY[option.name]))
            continue
        if option.name not in ours:
            result.unknown.append((option.name, option.line))
            continue
        section, key = ours[option.name]
        option_notes: list[str] = []
        value, problem = _convert(option, section, key, conf_dir, option_notes)
        if problem is None and value is not None:
            value, problem = check_value(section, key, value)
        if problem:
            problems.append("%s:%d: %s %s: cannot be carried over to [%s] %s: it %s"
                            % (path, option.line, option.name, option.text[:80], section, key, problem))
            continue
        carried = Carried(section, key, value, "%s (line %d)" % (option.name, option.line), option_notes)
        if value is None:  # interpreted as "keep our default" (the notes say why)
            result.notes.extend("%s (line %d): %s" % (option.name, option.line, n) for n in option_notes)
            continue
        result.carried.append(carried)
    # Without DISABLED_FEEDS Maltrail fetches every feed; our default disables the ones its shipped
    # maltrail.conf lists.
    if "DISABLED_FEEDS" not in options:
        result.carried.append(Carried("all", "disabled_feeds", [], "DISABLED_FEEDS (absent)",
                                      ["Maltrail fetches every feed when maltrail.conf does not set DISABLED_FEEDS"]))
    # A switch missing from maltrail.conf is off for Maltrail; where ours defaults to on, the
    # equivalent file turns it off.
    for maltrail_name, (section, key) in ours.items():
        spec = SCHEMA[section][key]
        if spec.type == "bool" and spec.default is True and maltrail_name not in options:
            result.carried.append(Carried(section, key, False, "%s (absent)" % maltrail_name,
                                          ["Maltrail leaves a switch that maltrail.conf does not set off"]))
    _spool_without_destination(result)
    if not problems:
        # Values fine one by one may still not fit together (USE_SSL without SSL_PEM).
        try:
            apply_overrides(load_config(None), {(c.section, c.key): c.value for c in result.carried})
        except ConfigError as exc:
            problems = ["%s: the options carried over do not fit together: %s"
                        % (path, problem.replace(COMMAND_LINE + ": ", "", 1)) for problem in exc.problems]
    if problems:
        raise ConfImportError(problems)
    result.toml = _render(result)
    return result


def _spool_without_destination(result: ImportResult) -> None:
    """DISABLE_LOCAL_LOG_STORAGE without LOG_SERVER or SYSLOG_SERVER makes Maltrail print events on
    the console instead of storing them; ours would refuse a spool nothing empties. The local log
    is kept, and the note says so and what does the console's job."""
    spool = [c for c in result.carried if (c.section, c.key) == ("sensor", "disable_local_log_storage")]
    if not spool or not spool[0].value:
        return
    destinations = {"log_server", "syslog_server", "logstash_server", "json_output"}
    if any(c.section == "sensor" and c.key in destinations and c.value for c in result.carried):
        return
    result.carried.remove(spool[0])
    result.notes.append("%s: without LOG_SERVER or SYSLOG_SERVER Maltrail prints events on the console instead "
                        "of storing them; here the local log is kept (disable_local_log_storage needs a "
                        "destination), and `--console` or [sensor] console = true prints them too" % spool[0].source)


def _render(result: ImportResult) -> str:
    out = ["# maltrail.toml written by `maltrail-engine config import` from",
           "# %s" % comment_text(os.path.abspath(result.source)),
           "# Every option of that file is below: carried over to the key that stands for it (each",
           "# key says which option and line), or listed at the end as not applicable, with why.",
           "# Keys not in this file keep their defaults; `maltrail-engine check-config -c FILE` prints",
           "# them all and checks this host (trails, interfaces, filter, privileges, log directory)."]
    for note in result.notes:
        out.append("# note: %s" % comment_text(note))
    by_section: dict[str, list[Carried]] = {}
    for carried in result.carried:
        by_section.setdefault(carried.section, []).append(carried)
    order = {(s, k): i for i, (s, k, _spec) in enumerate(iter_keys())}
    for section in SCHEMA:
        rows = sorted(by_section.get(section, []), key=lambda c: order[(c.section, c.key)])
        if not rows:
            continue
        out += ["", "[%s]" % section]
        for carried in rows:
            out.append("")
            out.append("# from Maltrail's %s" % carried.source)
            out += ["# %s" % comment_text(note) for note in carried.notes]
            out.append("%s = %s" % (carried.key, toml_value(carried.value)))
    if result.not_applicable or result.unknown:
        out += ["", "# Not applicable: options of maltrail.conf that no key of maltrail-engine stands for."]
        for name, line, reason in result.not_applicable:
            out.append("#   %s (line %d): %s" % (name, line, comment_text(reason)))
        for name, line in result.unknown:
            out.append("#   %s (line %d): not an option of Maltrail's known to this import; not carried over"
                       % (comment_text(name), line))
    return "\n".join(out) + "\n"


def write_toml(result: ImportResult, output: str, force: bool = False) -> None:
    """Write `result.toml` to `output`: never over an existing file unless `force`, never through
    a symlink at `output` (a replaced symlink is replaced, not followed), and only once the text
    has loaded with our loader. Raises ConfImportError."""
    if os.path.lexists(output) and not force:
        raise ConfImportError(["%s exists; pass --force to replace it" % output])
    directory = os.path.dirname(os.path.abspath(output))
    try:
        fd, temp = tempfile.mkstemp(prefix=".maltrail-import-", suffix=".toml", dir=directory)
    except OSError as exc:
        raise ConfImportError(["cannot write in %s: %s" % (directory, exc.strerror or exc)]) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(result.toml)
        os.chmod(temp, 0o644)
        try:
            load_config(temp)
        except ConfigError as exc:  # a bug of ours, never the user's file: say so, write nothing
            raise ConfImportError(["the written configuration does not load (a bug in config import): %s" % exc]) from None
        if force:
            os.replace(temp, output)
        else:
            # link() fails if `output` appeared meanwhile: no existing file is ever replaced.
            os.link(temp, output)
    except FileExistsError:
        raise ConfImportError(["%s exists; pass --force to replace it" % output]) from None
    except OSError as exc:
        raise ConfImportError(["cannot write %s: %s" % (output, exc.strerror or exc)]) from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
