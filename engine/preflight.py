"""The deployment check: whether this host can run the sensor as configured, problem by problem.

Owns what `maltrail-engine check-config` verifies beyond the file itself (as Maltrail's `-T`
does): the trail artifact opens and holds trails, the control files read, every capture
interface exists, the capture filter compiles with libpcap for each interface's link type (with
"default" expanded as the capture process expands it), the process may capture (root, or
CAP_NET_RAW effective), and the log directory is a safe place to write. The
live sensor runs the capture checks (`capture_findings`) before it starts anything, so a bad
interface, filter or missing privilege is one line and exit 1, not a failed start.

Must not: open a capture, create, change or remove files or directories, or compile trail
sources (a source is compiled by the sensor at start; this only says so). Reads what it checks
and nothing else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import sys
from dataclasses import dataclass

from events.fsafety import directory_problem

__all__ = ["Finding", "capture_findings", "deployment_findings", "compile_filter_problem",
           "capture_privilege_problem", "interface_dlt"]

# libpcap link-layer types (DLT_*, Linux values) a capture handle reports.
DLT_EN10MB = 1
DLT_RAW = 12
DLT_LINUX_SLL = 113
# The DLT libpcap gives an interface from its ARPHRD_* hardware type (/sys/class/net/IF/type),
# following libpcap's pcap-linux.c: Ethernet-like devices and loopback capture as Ethernet,
# IP tunnels and headerless devices (tun, WireGuard: ARPHRD_NONE) as raw IP; any other type is
# captured in libpcap's "cooked" mode, as the "any" device always is.
_ARPHRD_DLT = {1: DLT_EN10MB, 23: DLT_EN10MB, 772: DLT_EN10MB,
               256: DLT_RAW, 257: DLT_RAW, 258: DLT_RAW, 259: DLT_RAW, 264: DLT_RAW,
               768: DLT_RAW, 776: DLT_RAW, 65534: DLT_RAW}
_DLT_NAMES = {DLT_EN10MB: "Ethernet", DLT_RAW: "raw IP", DLT_LINUX_SLL: "Linux cooked"}
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


@dataclass(frozen=True)
class Finding:
    """One check: `what` was checked; `problem` says what is wrong (None when it passed) and
    `detail` what was found."""

    what: str
    detail: str = ""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


# --------------------------------------------------------------------------------------------
# Capture: interfaces, filter, privileges
# --------------------------------------------------------------------------------------------

def _kernel_interfaces() -> list[str]:
    try:
        return [name for _index, name in socket.if_nameindex()]
    except OSError:
        return []


def interface_dlt(interface: str) -> int:
    """The link-layer type libpcap will capture `interface` with (see _ARPHRD_DLT)."""
    if interface == "any":
        return DLT_LINUX_SLL
    try:
        with open("/sys/class/net/%s/type" % interface) as f:
            arphrd = int(f.read().strip())
    except (OSError, ValueError):
        return DLT_LINUX_SLL
    return _ARPHRD_DLT.get(arphrd, DLT_LINUX_SLL)


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_LIBPCAP = None


def _libpcap():
    global _LIBPCAP
    if _LIBPCAP is None:
        name = ctypes.util.find_library("pcap")
        if not name:
            raise OSError("libpcap is not installed (libpcap0.8 on Debian)")
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _LIBPCAP = lib
    return _LIBPCAP


def compile_filter_problem(expression: str, dlt: int, snaplen_bytes: int) -> tuple[int, str | None]:
    """(BPF instructions, None) when libpcap compiles `expression` for link type `dlt`, else
    (0, libpcap's message). A handle from pcap_open_dead compiles exactly as a live one of that
    link type would, with no interface and no privileges."""
    try:
        lib = _libpcap()
    except OSError as exc:
        return 0, str(exc)
    handle = lib.pcap_open_dead(dlt, snaplen_bytes)
    if not handle:
        return 0, "libpcap cannot make a handle for link type %d" % dlt
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode("utf-8"), 1, PCAP_NETMASK_UNKNOWN) != 0:
            return 0, (lib.pcap_geterr(handle) or b"rejected").decode("utf-8", "replace")
        count = program.bf_len
        lib.pcap_freecode(ctypes.byref(program))
        return count, None
    finally:
        lib.pcap_close(handle)


def capture_privilege_problem(pid="self") -> tuple[str, str | None]:
    """(what this process holds, None) when it may capture, else (that, the problem). Capture
    opens a packet socket, which needs CAP_NET_RAW; libpcap sets promiscuous mode through that
    socket (PACKET_ADD_MEMBERSHIP), which needs nothing more. Root holds it unless a container or
    a bounding set took it away, so the effective set decides, not the uid."""
    from engine.processes import privileges
    try:
        effective = privileges.effective_caps(pid)
    except (OSError, KeyError, ValueError):
        effective = set()
    uid = os.geteuid()
    who = "root" if uid == 0 else "uid %d" % uid
    if privileges.CAP_NET_RAW in effective:
        return "%s, with CAP_NET_RAW" % who, None
    return who, ("capturing needs root or CAP_NET_RAW; this process (%s) lacks it (run as root, run it as "
                 "the installed service, or grant it to the interpreter: setcap cap_net_raw=eip %s)"
                 % (who, os.path.realpath(_interpreter())))


def _interpreter() -> str:
    return sys.executable or "python3"


def capture_findings(cfg) -> list[Finding]:
    """The checks live capture needs: every interface exists, the filter compiles for each
    interface's link type, the process holds the capture privileges."""
    from engine.sources.live import _devices, expand_filter, linktype_from_dlt
    s = cfg.sensor
    findings = []
    kernel = _kernel_interfaces()
    known = set(kernel) | {"any"}
    dlts: dict[int, list[str]] = {}
    for name in s.interface:
        if name not in known:  # libpcap also captures on devices the kernel does not list (nflog, ...)
            known |= set(_devices() or ())
        if name not in known:
            findings.append(Finding("interface %s" % name, problem="not found; available: %s"
                                    % ", ".join(["any"] + sorted(kernel))))
            continue
        dlt = interface_dlt(name)
        dlts.setdefault(dlt, []).append(name)
        findings.append(Finding("interface %s" % name, "present (%s link layer)" % _DLT_NAMES.get(dlt, "DLT %d" % dlt)))
    if not s.capture_filter:
        findings.append(Finding("capture filter", '"" (every frame reaches the sensor)'))
    for dlt, names in dlts.items():
        if not s.capture_filter:
            break
        expression = expand_filter(s.capture_filter, linktype_from_dlt(dlt))
        instructions, problem = compile_filter_problem(expression, dlt, s.snaplen_bytes)
        where = "capture filter on %s" % ", ".join(names)
        if problem:
            findings.append(Finding(where, problem="%r does not compile: %s" % (_shown(s.capture_filter), problem)))
        else:
            findings.append(Finding(where, "%r compiles to %d BPF instructions" % (_shown(s.capture_filter),
                                                                                    instructions)))
    held, problem = capture_privilege_problem()
    findings.append(Finding("capture privileges", held, problem))
    return findings


def _shown(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Trails, controls, log directory
# --------------------------------------------------------------------------------------------

def _artifact_integrity_problem(artifact) -> str | None:
    """Where the artifact's integrity check (a checksum over its sections, written at build)
    is asked, once the artifact format carries one; Artifact.open's structural checks are all
    there is until then."""
    return None


def _trails_finding(cfg) -> Finding:
    from engine.trail_artifact import _is_artifact
    from matchers import Artifact, ArtifactError
    path = cfg.all.trails_artifact
    allowed = cfg.sensor.allow_no_trails
    if not path or not os.path.exists(path):
        if allowed:
            return Finding("trails", "none at %s; [sensor] allow_no_trails runs on heuristics alone" % path)
        return Finding("trails", problem="no trails at %s; build them: maltrail-engine trails build --source "
                                         "/path/to/maltrail/trails.csv (or pass --trails PATH)" % (path or "(none)"))
    if not _is_artifact(path):
        if not os.access(path, os.R_OK):
            return Finding("trails", problem="%s cannot be read" % path)
        return Finding("trails", "%s is a trail source (trails.csv or static trail directory); the sensor "
                                 "compiles it at start, once, into its cache" % path)
    try:
        artifact = Artifact.open(path)
    except ArtifactError as exc:
        return Finding("trails", problem=str(exc))
    try:
        problem = _artifact_integrity_problem(artifact)
        if problem:
            return Finding("trails", problem=problem)
        count, generation = artifact.trail_count, artifact.generation
    finally:
        artifact.close()
    if not count and not allowed:
        return Finding("trails", problem="%s holds no trails (set [sensor] allow_no_trails to run on heuristics "
                                         "alone)" % path)
    return Finding("trails", "%s: generation %d, %s trails" % (path, generation, format(count, ",")))


def _controls_finding(cfg) -> Finding:
    from engine.control_files import ControlsError, read_controls
    try:
        plain = read_controls(cfg)
    except ControlsError as exc:
        return Finding("control files", problem=str(exc))
    counts = [("whitelist", len(plain["whitelist_ips"]) + len(plain["whitelist_networks"])
               + len(plain["whitelist_domains"])), ("host whitelist", len(plain["host_trails"])),
              ("ignore rules", len(plain["ignore_rules"]))]
    detail = ", ".join("%s %d entries" % (name, n) for name, n in counts if n)
    if plain["ignore_regex"]:
        detail = (detail + ", " if detail else "") + "ignore regex set"
    return Finding("control files", detail or "none configured")


def _sensor_account(cfg) -> tuple[tuple[int, ...], Finding | None]:
    """(uids the sensor's processes run as besides this one, a finding about that account):
    the account `[sensor] user` names, as a sensor started by this process would resolve it
    (engine/processes/privileges.py: only a root start changes account), trusted to own the log directory."""
    from engine.processes import privileges
    notes = []
    try:
        account = privileges.resolve_account(cfg.sensor.user, notice=notes.append)
    except privileges.PrivilegeError as exc:
        return (), Finding("sensor account", problem=str(exc))
    if account is None:
        return (), Finding("sensor account", "this process's own (uid %d): no account change" % os.geteuid())
    text = "%s (uid %d): workers, the log writer and capture once open run as it" % (account.name, account.uid)
    if notes:
        text += "; " + notes[0]
    return (account.uid,), Finding("sensor account", text)


def _log_dir_finding(cfg, trusted_uids=()) -> Finding:
    path = cfg.all.log_dir
    problem = directory_problem(path, trusted_uids)
    if problem:
        return Finding("log directory", problem=problem)
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            return Finding("log directory", problem="%s is not writable by this process (uid %d)"
                                                    % (path, os.geteuid()))
        return Finding("log directory", "%s (safe, writable)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return Finding("log directory", problem="%s does not exist and %s is not writable by this process "
                                                "(uid %d) to create it" % (path, parent, os.geteuid()))
    return Finding("log directory", "%s does not exist yet; the sensor creates it (in %s, safe)" % (path, parent))


def deployment_findings(cfg, capture: bool = True) -> list[Finding]:
    """Every check of this host against `cfg`, in the order a start needs them; `capture`
    False leaves out the capture checks (replay needs none)."""
    findings = [_trails_finding(cfg), _controls_finding(cfg)]
    trusted, account = _sensor_account(cfg)
    if account is not None:
        findings.append(account)
    if capture:
        findings += capture_findings(cfg)
    findings.append(_log_dir_finding(cfg, trusted))
    return findings
