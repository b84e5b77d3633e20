/*
 * workers._fastpath: the worker's per-packet path in C, over a whole batch.
 *
 * Owns the batch scan: decode every frame (decode.h), count it as decoded or skipped by reason,
 * and decide whether it can produce an event: an IP or IP:port trail on either end, a domain
 * trail on a DNS question, an HTTP host or a TLS server name, a URL or user-agent trail on an
 * HTTP request, a trail address in a DNS answer, or a QUIC long-header packet (whose Initial
 * needs the Python reassembler), or, when the trails hold certificates, a server's TCP segment
 * of a TLS first flight (workers/certs.py joins it). Only those frames are returned; the Python reference
 * (workers/pipeline.py) judges them, so events are the reference's by construction. Whatever C
 * cannot decide exactly as the reference would (non-ASCII names, a ClientHello split over
 * records, DNS over TCP, an IPv6 request without Host...) is returned too.
 *
 * With a `Heuristics` object (below), the scan also keeps the heuristics' state for every decoded
 * frame, step for step as the Python trackers would (workers/heuristics: the TCP/UDP/infection/
 * web scan windows, DNS exhaustion), and returns each flagged frame with the verdict bits the
 * reference would have reached for it; and it flags every frame on which the stateless
 * heuristics could fire (NXDOMAIN answers, long names, suspicious requests and responses), by
 * cheap literal checks that are never narrower than the Python judgement.
 *
 * For the frames it does not return, it counts what the reference counts as extracted (DNS
 * queries and responses, HTTP requests, TLS server names), so counters are identical as well.
 *
 * Must not know how frames were captured or how events are written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

#include "artifact.h"
#include "decode.h"
#include "exhaustion.h"
#include "keyhash.h"
#include "needles.h"
#include "relits.h"
#include "window.h"

/* counters returned by scan(): decoded, the skip reasons, then extracted */
enum {
    C_DECODED = 0,
    C_SKIP0 = 1,
    C_DNS_QUERIES = 1 + MT_SKIP_COUNT,
    C_DNS_RESPONSES,
    C_HTTP_REQUESTS,
    C_TLS_NAMES,
    C_COUNT
};

#define MAX_HEAD_BYTES 16384
/* Scratch regions for one HTTP request (every piece of it is shorter than MAX_HEAD_BYTES): */
#define R (2 * MAX_HEAD_BYTES + 64)
#define SCR_HOST 0              /* the host, then the host of an absolute or CONNECT target */
#define SCR_PATH (1 * R)        /* the lower-cased target, then the path */
#define SCR_NAME (2 * R)        /* a host normalised for the domain check */
#define SCR_WORK (3 * R)        /* the new path while splitting a target; the decoded POST body */
#define SCR_UA (4 * R)          /* the lower-cased user agent */
#define SCR_URL (5 * R)         /* url_candidate(): 3 regions, then host + check (up to 2 R) */
#define SCRATCH_BYTES (10 * R)
#define TRI_BUCKETS 4096
#define MAX_LITERALS 65536

enum { S_IP4, S_CIDR4, S_IPPORT4, S_IP6, S_IPPORT6, S_CIDR6, S_DOMAINS, S_URLS, S_TRAILS, S_STRINGS, S_P24,
       S_CERTS, S_DOMAINS_FILTER, S_URLS_FILTER, S_NSECTIONS };
static const char *SECTION_NAMES[S_NSECTIONS] = {"ip4", "cidr4", "ipport4", "ip6", "ipport6", "cidr6_list",
                                                  "domains", "urls", "trails", "strings", "ip4_p24", "certs",
                                                  "domains_filter", "urls_filter"};

/* Server flights of TLS handshakes being followed for workers/certs.py: a direct-mapped table of
 * flow hashes (server -> client direction), each with the payload bytes it may still flag. A
 * collision replaces the older flight (its later segments then reach Python with a gap, which
 * the assembler counts as a give-up). The budget is twice the assembler's 64 KiB cap
 * (workers/certs.py MAX_FLIGHT_BYTES), so retransmissions cannot starve it before Python stops. */
#define CERT_WATCH_SLOTS 4096
#define CERT_WATCH_BUDGET_BYTES (2u * 64u * 1024u)
typedef struct {
    uint64_t key;           /* 0: free */
    uint32_t budget;
} cert_watch;

typedef struct {
    PyObject_HEAD
    Py_buffer sec[S_NSECTIONS];
    int have[S_NSECTIONS];
    mt_roaring ip4, cidr4;
    mt_roaring64 ipport4;
    mt_table domains, urls;
    /* Key filters in front of the two tables (artifact.h mt_filter): the artifact's sections, or,
     * for an artifact built without them, this worker's own copies (own_filter[]), built at load. */
    mt_filter domains_filter, urls_filter;
    uint64_t *own_filter[2];
    uint32_t n_ip6, n_ipport6, n_cidr6;
    /* regex trail prefilter: literals, bucketed by a hash of their first three bytes */
    uint8_t *lit_blob;
    uint32_t *lit_off, *lit_len, n_lits;
    uint32_t *bucket_start, *bucket_items; /* bucket b holds items [bucket_start[b], bucket_start[b+1]) */
    int regex_always;
    /* user-agent trail patterns (lower case) */
    uint8_t *ua_blob;
    uint32_t *ua_off, *ua_len, n_uas;
    uint8_t *scratch;
    int certs_on;           /* the artifact holds certificate trails */
    cert_watch *watch;      /* CERT_WATCH_SLOTS entries when certs_on */
    uint32_t watching;      /* slots in use: none, and only a ServerHello segment costs a hash */
} Tables;

static void Tables_dealloc(Tables *self)
{
    for (int i = 0; i < S_NSECTIONS; i++)
        if (self->have[i])
            PyBuffer_Release(&self->sec[i]);
    PyMem_Free(self->ipport4.keys);
    PyMem_Free(self->ipport4.maps);
    PyMem_Free(self->lit_blob);
    PyMem_Free(self->lit_off);
    PyMem_Free(self->lit_len);
    PyMem_Free(self->bucket_start);
    PyMem_Free(self->bucket_items);
    PyMem_Free(self->ua_blob);
    PyMem_Free(self->ua_off);
    PyMem_Free(self->ua_len);
    PyMem_Free(self->scratch);
    PyMem_Free(self->watch);
    PyMem_Free(self->own_filter[0]);
    PyMem_Free(self->own_filter[1]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- the heuristics' state ------------------------------------------------------------------ */

/* Verdict bits: workers/heuristics/verdicts.py; the module exports them and
 * tests/test_heuristics_fast.py checks they agree. */
enum { V_PORT_SCAN = 0x01, V_UDP_SCAN = 0x02, V_INFECTION_SCAN = 0x04, V_WEB_SCAN = 0x08, V_DNS_EXHAUSTION = 0x10 };
/* workers/heuristics/scan.py WELL_KNOWN_PORTS */
#define MT_WELL_KNOWN_PORTS 1024
/* What a literal means to the prefilters that share an index. */
enum { UA_SUSPICIOUS = 1, UA_WHITELISTED = 2 };
enum { REQ_NEEDLE = 1, REQ_PATTERN = 2 };
#define MAX_BATCH_FRAMES 0xFFFF  /* a flagged entry holds the frame's index in its low 16 bits */

typedef struct {
    int version, prefix;
    uint8_t addr[16];
} local_net;

/* The last verdicts of a pure function of a text (the user-agent and path prefilters), by a keyed
 * 64-bit fingerprint of the text: traffic repeats its user agents and many of its paths, and a
 * fingerprint costs a tenth of a search. Direct-mapped; 0 = empty. */
#define MEMO_SLOTS 512
typedef struct {
    uint64_t fp[MEMO_SLOTS];
    uint8_t verdict[MEMO_SLOTS];
} memo;

typedef struct {
    PyObject_HEAD
    int ready, busy;
    /* switches: HeuristicSettings.on(name) */
    int enabled, port_on, udp_on, infection_on, web_on, nxdomain_on, dga_on, long_on, exhaustion_on, ua_on,
        request_on, download_on, iot_on, proxy_on, missing_host_on, response_on;
    uint32_t udp_probe_max_bytes, long_domain_length, response_head_bytes;
    uint32_t trace_lo, trace_hi;           /* TRACEROUTE_PORTS: [lo, hi) */
    uint8_t infection_port[8192];          /* bitmap of INFECTION_PORTS */
    local_net *nets;
    uint32_t n_nets;
    mt_hkey hk;
    mt_dwindow port, udp, infection, web;
    mt_dx dx;
    mt_lits ua;                            /* SUSPICIOUS_USER_AGENTS, WHITELIST_USER_AGENTS */
    mt_lits req;                           /* REQUEST_NEEDLES and the patterns' literals */
    mt_formula req_f;
    mt_trigger req_t;
    uint32_t req_root;
    int req_always;                        /* a pattern requires no literal: the needles decide */
    mt_lits fname;                         /* SUSPICIOUS_FILENAMES' literals */
    mt_formula fname_f;
    mt_trigger fname_t;
    uint32_t fname_root;
    int fname_always;
    mt_lits resp;                          /* RESPONSE_NEEDLES */
    mt_litlist dl_ext, dl_white, proxy_words;
    memo ua_memo, path_memo;               /* verdicts of recent user agents and paths */
    uint64_t *seen;                        /* literal ids found in one text */
    uint32_t seen_words;
    uint8_t *buf;                          /* one decoded text */
    size_t buf_cap;
} Heuristics;

static inline uint32_t tri_hash(const uint8_t *p)
{
    return ((uint32_t)p[0] * 2654435761u ^ (uint32_t)p[1] * 40503u ^ (uint32_t)p[2] * 97u) & (TRI_BUCKETS - 1);
}

/* Copies a list of bytes objects into one blob with offsets; returns 0 or -1. */
static int take_patterns(PyObject *list, uint8_t **blob, uint32_t **off, uint32_t **len, uint32_t *n)
{
    PyObject *seq = PySequence_Fast(list, "patterns must be a sequence of bytes");
    if (!seq)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), total = 0;
    if (count > MAX_LITERALS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many patterns");
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "patterns must be bytes");
            return -1;
        }
        total += PyBytes_GET_SIZE(item);
    }
    *blob = PyMem_Malloc(total ? total : 1);
    *off = PyMem_Malloc(sizeof(uint32_t) * (count ? count : 1));
    *len = PyMem_Malloc(sizeof(uint32_t) * (count ? count : 1));
    if (!*blob || !*off || !*len) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t l = PyBytes_GET_SIZE(item);
        memcpy(*blob + at, PyBytes_AS_STRING(item), l);
        (*off)[i] = (uint32_t)at;
        (*len)[i] = (uint32_t)l;
        at += l;
    }
    *n = (uint32_t)count;
    Py_DECREF(seq);
    return 0;
}

static int Tables_init(Tables *self, PyObject *args, PyObject *kwds)
{
    PyObject *sections, *literals, *uas;
    int regex_always;
    if (!PyArg_ParseTuple(args, "O!OpO", &PyDict_Type, &sections, &literals, &regex_always, &uas))
        return -1;
    if (self->scratch) {
        PyErr_SetString(PyExc_RuntimeError, "Tables already initialised");
        return -1;
    }
    self->scratch = PyMem_Malloc(SCRATCH_BYTES);
    if (!self->scratch) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < S_NSECTIONS; i++) {
        PyObject *o = PyDict_GetItemString(sections, SECTION_NAMES[i]);
        if (!o)
            continue;
        if (PyObject_GetBuffer(o, &self->sec[i], PyBUF_SIMPLE) < 0)
            return -1;
        self->have[i] = 1;
    }
#define SEC(i) ((const uint8_t *)self->sec[i].buf)
#define SECLEN(i) ((size_t)self->sec[i].len)
    if (!self->have[S_TRAILS] || !self->have[S_STRINGS]) {
        PyErr_SetString(PyExc_ValueError, "the trail table and strings are required");
        return -1;
    }
    if ((self->have[S_IP4] && mt_roaring_open(&self->ip4, SEC(S_IP4), SECLEN(S_IP4)) < 0) ||
        (self->have[S_CIDR4] && mt_roaring_open(&self->cidr4, SEC(S_CIDR4), SECLEN(S_CIDR4)) < 0)) {
        PyErr_SetString(PyExc_ValueError, "bad roaring bitmap section");
        return -1;
    }
    if (self->have[S_IPPORT4]) {
        size_t l = SECLEN(S_IPPORT4);
        uint64_t n = l >= 8 ? ((uint64_t)mt_rd32(SEC(S_IPPORT4)) | ((uint64_t)mt_rd32(SEC(S_IPPORT4) + 4) << 32)) : 0;
        if (n * 12 > l) {
            PyErr_SetString(PyExc_ValueError, "bad 64-bit roaring bitmap section");
            return -1;
        }
        self->ipport4.keys = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
        self->ipport4.maps = PyMem_Malloc(sizeof(mt_roaring) * (n ? n : 1));
        if (!self->ipport4.keys || !self->ipport4.maps) {
            PyErr_NoMemory();
            return -1;
        }
        if (mt_roaring64_open(&self->ipport4, SEC(S_IPPORT4), l, (uint32_t)n) < 0) {
            PyErr_SetString(PyExc_ValueError, "bad 64-bit roaring bitmap section");
            return -1;
        }
    }
    self->n_ip6 = self->have[S_IP6] ? (uint32_t)(SECLEN(S_IP6) / 16) : 0;
    self->n_ipport6 = self->have[S_IPPORT6] ? (uint32_t)(SECLEN(S_IPPORT6) / 18) : 0;
    self->n_cidr6 = self->have[S_CIDR6] ? (uint32_t)(SECLEN(S_CIDR6) / 40) : 0;
    uint32_t ntrails = (uint32_t)(SECLEN(S_TRAILS) / sizeof(mt_trail));
    for (int which = 0; which < 2; which++) {
        int s = which ? S_URLS : S_DOMAINS;
        mt_table *t = which ? &self->urls : &self->domains;
        memset(t, 0, sizeof(*t));
        if (!self->have[s])
            continue;
        if (SECLEN(s) < MT_TABLE_HEADER_BYTES) {
            PyErr_SetString(PyExc_ValueError, "bad hash table section");
            return -1;
        }
        uint32_t cap, count;
        memcpy(&cap, SEC(s), 4);
        memcpy(&count, SEC(s) + 4, 4);
        if (cap == 0 || (cap & (cap - 1)) || count >= cap || SECLEN(s) != MT_TABLE_HEADER_BYTES + (uint64_t)cap * 8) {
            PyErr_SetString(PyExc_ValueError, "bad hash table section");
            return -1;
        }
        t->tags = (const uint32_t *)(SEC(s) + MT_TABLE_HEADER_BYTES);
        t->ids = t->tags + cap;
        t->mask = cap - 1;
        t->count = count;
        t->trails = (const mt_trail *)SEC(S_TRAILS);
        t->ntrails = ntrails;
        t->strings = SEC(S_STRINGS);
        t->strings_len = SECLEN(S_STRINGS);
        int fs = which ? S_URLS_FILTER : S_DOMAINS_FILTER;
        mt_filter *f = which ? &self->urls_filter : &self->domains_filter;
        if (self->have[fs]) {
            /* a filter that fails its checks is refused, never used: one with bits missing would
             * hide trails */
            const char *why = "bad key filter section";
            if (mt_filter_open(f, SEC(fs), SECLEN(fs), t, &why) < 0) {
                PyErr_Format(PyExc_ValueError, "%s: %s", SECTION_NAMES[fs], why);
                return -1;
            }
        } else if (count) {
            /* an artifact from before the filters: build this worker's own (the same bits the
             * compiler would store; costs one pass over the table's keys and private memory) */
            uint64_t nwords = ((uint64_t)1 << mt_filter_log2_bits(count)) / 64;
            self->own_filter[which] = PyMem_Calloc(nwords, 8);
            if (!self->own_filter[which]) {
                PyErr_NoMemory();
                return -1;
            }
            mt_filter_fill(self->own_filter[which], (uint32_t)(nwords - 1), t);
            f->words = self->own_filter[which];
            f->wmask = (uint32_t)(nwords - 1);
        }
    }
    if (take_patterns(literals, &self->lit_blob, &self->lit_off, &self->lit_len, &self->n_lits) < 0)
        return -1;
    self->regex_always = regex_always;
    self->bucket_start = PyMem_Calloc(TRI_BUCKETS + 1, sizeof(uint32_t));
    self->bucket_items = PyMem_Malloc(sizeof(uint32_t) * (self->n_lits ? self->n_lits : 1));
    if (!self->bucket_start || !self->bucket_items) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < self->n_lits; i++) {
        if (self->lit_len[i] < 3) {
            PyErr_SetString(PyExc_ValueError, "regex literals must be at least 3 bytes");
            return -1;
        }
        self->bucket_start[tri_hash(self->lit_blob + self->lit_off[i]) + 1]++;
    }
    for (uint32_t b = 0; b < TRI_BUCKETS; b++)
        self->bucket_start[b + 1] += self->bucket_start[b];
    {
        uint32_t fill[TRI_BUCKETS];
        memcpy(fill, self->bucket_start, sizeof(fill));
        for (uint32_t i = 0; i < self->n_lits; i++)
            self->bucket_items[fill[tri_hash(self->lit_blob + self->lit_off[i])]++] = i;
    }
    if (take_patterns(uas, &self->ua_blob, &self->ua_off, &self->ua_len, &self->n_uas) < 0)
        return -1;
    self->certs_on = self->have[S_CERTS] && SECLEN(S_CERTS) >= 20;
    if (self->certs_on) {
        self->watch = PyMem_Calloc(CERT_WATCH_SLOTS, sizeof(cert_watch));
        if (!self->watch) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

/* ---- lookups ------------------------------------------------------------------------------- */

static int cmp_bytes(const uint8_t *a, const uint8_t *b, size_t n) { return memcmp(a, b, n); }

static int sorted_contains(const uint8_t *base, uint32_t count, size_t width, const uint8_t *key)
{
    int64_t lo = 0, hi = (int64_t)count - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) >> 1;
        int c = cmp_bytes(base + (size_t)mid * width, key, width);
        if (c == 0)
            return 1;
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

static int ip_hit(const Tables *t, int version, const uint8_t *addr, uint16_t port)
{
    if (version == 4) {
        uint32_t a = mt_be32(addr);
        if (t->have[S_P24] && t->sec[S_P24].len == (1 << 21) &&
            !((((const uint8_t *)t->sec[S_P24].buf)[a >> 11] >> ((a >> 8) & 7)) & 1))
            return 0;  /* no trail touches this /24 */
        if (port && t->have[S_IPPORT4] && mt_roaring64_contains(&t->ipport4, ((uint64_t)port << 32) | a))
            return 1;
        if (t->have[S_IP4] && mt_roaring_contains(&t->ip4, a))
            return 1;
        if (t->have[S_CIDR4] && mt_roaring_contains(&t->cidr4, a))
            return 1;
        return 0;
    }
    if (port && t->n_ipport6) {
        uint8_t key[18];
        memcpy(key, addr, 16);
        key[16] = (uint8_t)(port >> 8);
        key[17] = (uint8_t)port;
        if (sorted_contains((const uint8_t *)t->sec[S_IPPORT6].buf, t->n_ipport6, 18, key))
            return 1;
    }
    if (t->n_ip6 && sorted_contains((const uint8_t *)t->sec[S_IP6].buf, t->n_ip6, 16, addr))
        return 1;
    const uint8_t *c = (const uint8_t *)(t->n_cidr6 ? t->sec[S_CIDR6].buf : NULL);
    for (uint32_t i = 0; i < t->n_cidr6; i++, c += 40)
        if (memcmp(c, addr, 16) <= 0 && memcmp(addr, c + 16, 16) <= 0)
            return 1;
    return 0;
}

#define SUFFIX_BATCH 16
static int suffix_hit(const mt_table *t, const mt_filter *f, const uint8_t *name, size_t n)
{
    size_t start = 0;
    if (f->words && t->count) {
        /* Every suffix's filter word is requested before any is tested, so the cache misses of a
         * name's 2-4 suffixes overlap; then only the suffixes the filter passes reach the table.
         * A name with more labels than the batch finishes in the plain loop below. */
        uint64_t h[SUFFIX_BATCH];
        uint32_t at[SUFFIX_BATCH], k = 0;
        while (start < n && k < SUFFIX_BATCH) {
            h[k] = mt_filter_hash(name + start, n - start);
            mt_filter_prefetch(f, h[k]);
            at[k++] = (uint32_t)start;
            const uint8_t *dot = memchr(name + start, '.', n - start);
            start = dot ? (size_t)(dot - name) + 1 : n;
        }
        for (uint32_t j = 0; j < k; j++)
            if (mt_filter_maybe(f, h[j]) && mt_table_find(t, name + at[j], n - at[j]) >= 0)
                return 1;
    }
    while (start < n) {
        if (mt_table_find_filtered(t, f, name + start, n - start) >= 0)
            return 1;
        const uint8_t *dot = memchr(name + start, '.', n - start);
        if (!dot)
            break;
        start = (size_t)(dot - name) + 1;
    }
    return 0;
}

static int literal_hit(const Tables *t, const uint8_t *name, size_t n)
{
    if (!t->n_lits || n < 3)
        return 0;
    for (size_t i = 0; i + 3 <= n; i++) {
        uint32_t b = tri_hash(name + i);
        for (uint32_t k = t->bucket_start[b]; k < t->bucket_start[b + 1]; k++) {
            uint32_t lit = t->bucket_items[k];
            uint32_t l = t->lit_len[lit];
            if (i + l <= n && memcmp(name + i, t->lit_blob + t->lit_off[lit], l) == 0)
                return 1;
        }
    }
    return 0;
}

/* workers.pipeline._NUMERIC_NAME / _VALID_NAME: printable ASCII without space (0x21-0x7E), a dot,
 * a last label after it; not digits and dots only. */
static int name_checkable(const uint8_t *s, size_t n)
{
    if (!n)
        return 0;
    int numeric = 1, last_dot = -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        int digit = c >= '0' && c <= '9';
        if (!(digit || c == '.'))
            numeric = 0;
        if (c < 0x21 || c > 0x7E)
            return 0;
        if (c == '.')
            last_dot = (int)i;
    }
    if (numeric)
        return 0;
    return last_dot >= 0 && (size_t)last_dot + 1 < n;
}

#define IPADRESS ".ip-adress.com"

/* memmem for short fixed needles (an HTTP head's line ends, ".onion.", ".intranet."): memchr
 * (vectorised in libc) finds each place the first byte occurs and memcmp confirms the rest.
 * glibc's memmem sets up a shift table on every call, which cost more than the search itself on a
 * 200-byte request head (measured in ARCHITECTURE.md). At most nn - 1 bytes compared per byte of
 * the haystack. */
static const uint8_t *find_bytes(const uint8_t *h, size_t hn, const char *needle, size_t nn)
{
    if (!nn || nn > hn)
        return nn ? NULL : h;
    const uint8_t first = (uint8_t)needle[0];
    const uint8_t *p = h, *end = h + (hn - nn) + 1;    /* one past the last possible start */
    while (p < end) {
        p = memchr(p, first, (size_t)(end - p));
        if (!p)
            return NULL;
        if (memcmp(p + 1, needle + 1, nn - 1) == 0)
            return p;
        p++;
    }
    return NULL;
}

/* Could workers.matchers DomainMatcher.match() find a trail for this (valid, lower-case) name? */
static int domain_candidate(const Tables *t, const uint8_t *s, size_t n)
{
    if (!name_checkable(s, n))
        return 0;
    if (t->have[S_DOMAINS]) {
        if (suffix_hit(&t->domains, &t->domains_filter, s, n))
            return 1;
        size_t sl = sizeof(IPADRESS) - 1;
        if (n > sl && memcmp(s + n - sl, IPADRESS, sl) == 0 &&
            mt_table_find_filtered(&t->domains, &t->domains_filter, s, n - sl) >= 0)
            return 1;
        const uint8_t *onion = n > 1 ? find_bytes(s + 1, n - 1, ".onion.", 7) : NULL;  /* a gateway */
        if (onion && mt_table_find_filtered(&t->domains, &t->domains_filter, s, (size_t)(onion - s) + 6) >= 0)
            return 1;
    }
    if (t->regex_always)
        return 1;
    return literal_hit(t, s, n);
}

/* ---- DNS --------------------------------------------------------------------------------- */

#define WORD(w) {w, sizeof(w) - 1}
static const struct { const char *s; size_t n; } IGNORED_SUFFIXES[] = {
    WORD("arpa"), WORD("local"), WORD("guest"), WORD("intranet"), WORD("int"), WORD("corp"), WORD("home"),
    WORD("lan"), WORD("intra"), WORD("intran"), WORD("workgroup"), WORD("localdomain"), WORD("url"),
    WORD("alienvault"), WORD("example"), WORD("test"), WORD("invalid"), WORD("localhost")};

static int ignored_query(const uint8_t *s, size_t n)
{
    if (find_bytes(s, n, ".intranet.", 10))
        return 1;
    size_t last = n;
    while (last > 0 && s[last - 1] != '.')
        last--;
    for (size_t x = 0; x < sizeof(IGNORED_SUFFIXES) / sizeof(IGNORED_SUFFIXES[0]); x++)
        if (IGNORED_SUFFIXES[x].n == n - last && memcmp(s + last, IGNORED_SUFFIXES[x].s, n - last) == 0)
            return 1;
    return 0;
}

/* what a frame adds to the extracted counters when it is not flagged (Python counts the others):
 * ext[k] goes to counts[C_DNS_QUERIES + k] */
enum { E_DNS_QUERIES, E_DNS_RESPONSES, E_HTTP_REQUESTS, E_TLS_NAMES, E_COUNT };

/* The first label is longer than long_domain_length and has no '-' (workers/heuristics/dns.py
 * long_name_trail, before its "blogspot" exception). */
static int long_first_label(const Heuristics *H, const uint8_t *name, size_t n)
{
    const uint8_t *dot = memchr(name, '.', n);
    size_t label = dot ? (size_t)(dot - name) : n;
    return label > H->long_domain_length && !memchr(name, '-', label);
}

/* One UDP DNS message. Returns 1 to hand the frame to Python, 0 (adding to ext[] what the reference
 * would count), or -1 when the heuristics ran out of memory. With H, the exhaustion window sees the
 * query (Worker._dns's order: opcode 0, counted, not ignored, then observe_query) and its verdict
 * goes to *bits. `flagged`: the frame is returned anyway; only the heuristics' state matters. */
static int scan_dns(const Tables *t, Heuristics *H, const uint8_t *m, uint32_t n, uint8_t *name, uint32_t *ext,
                    int64_t ts_us, int flagged, uint32_t *bits)
{
    if (n < 12)
        return 0;
    uint32_t flags = mt_be16(m + 2), qdcount = mt_be16(m + 4), ancount = mt_be16(m + 6);
    int response = (flags & 0x8000) != 0, opcode = (flags >> 11) & 0x0F, rcode = flags & 0x0F;
    if (!qdcount)
        return 0;
    uint32_t after;
    int nonascii;
    int len = mt_dns_name(m, n, 12, name, &after, &nonascii);
    if (len < 0 || after + 4 > n)
        return 0;                              /* parse_dns gives None */
    if (len == 0)
        return 0;                              /* no name: nothing counted or judged */
    if (nonascii)
        return 1;                              /* Python's lower() decides such names; never judged
                                                  by the heuristics (not _JUDGED_NAME) */
    uint32_t qclass = mt_be16(m + after + 2);
    if (!response) {
        if (opcode != 0)
            return 0;
        ext[E_DNS_QUERIES]++;
        if (ignored_query(name, (size_t)len))
            return 0;
        int flag = flagged;
        mt_dx_query q = {0, 0, 0};
        if (H && H->exhaustion_on)
            q = mt_dx_prepare(&H->dx, name, (size_t)len);   /* its index line comes meanwhile */
        if (H && H->long_on && mt_judged(name, (size_t)len) && long_first_label(H, name, (size_t)len))
            flag = 1;
        flag = flag || domain_candidate(t, name, (size_t)len);
        if (q.counts) {
            int r = mt_dx_observe_prepared(&H->dx, q, ts_us);
            if (r < 0)
                return -1;
            if (r)
                *bits |= V_DNS_EXHAUSTION;
        }
        return flag;
    }
    ext[E_DNS_RESPONSES]++;
    if (flagged)
        return 1;
    /* NXDOMAIN counting and the DGA check stay in Python (Worker._nxdomain): every answer that
     * passes its first checks goes there, so its counters see exactly the reference's answers */
    if (H && rcode == 3 && opcode == 0 && (H->nxdomain_on || H->dga_on) && mt_judged(name, (size_t)len) &&
        !ignored_query(name, (size_t)len))
        return 1;
    if (rcode != 0 || qclass != 1 || !ancount)
        return 0;
    uint32_t pos = after + 4;
    uint8_t scratch[MT_MAX_NAME + 1];
    for (uint32_t q = 1; q < qdcount && q <= 16; q++) {  /* further questions: skipped like parse_dns */
        uint32_t a2;
        int na;
        if (mt_dns_name(m, n, pos, scratch, &a2, &na) < 0 || a2 + 4 > n)
            return 0;                          /* parse_dns returns the message without answers */
        pos = a2 + 4;
    }
    for (uint32_t i = 0; i < ancount && i < 64; i++) {
        uint32_t a2;
        int na;
        if (mt_dns_name(m, n, pos, scratch, &a2, &na) < 0 || a2 + 10 > n)
            break;
        uint32_t rtype = mt_be16(m + a2), rclass = mt_be16(m + a2 + 2), rdlen = mt_be16(m + a2 + 8);
        pos = a2 + 10;
        if (pos + rdlen > n)
            break;
        if (rclass == 1 && ((rtype == 1 && rdlen == 4 && ip_hit(t, 4, m + pos, 0)) ||
                            (rtype == 28 && rdlen == 16 && ip_hit(t, 6, m + pos, 0))))
            return 1;
        pos += rdlen;
    }
    return 0;
}

/* ---- TLS --------------------------------------------------------------------------------- */

/* workers.certs starts_server_hello: a handshake record of SSL 3.0-TLS 1.2 opening with a
 * ServerHello. */
static inline int cert_start(const uint8_t *p, uint32_t n)
{
    return n > 5 && p[0] == 22 && p[1] == 3 && p[2] <= 3 && p[5] == 2;
}

/* The flow hash of a packet in its own direction (FNV-1a over version, addresses, ports). */
static uint64_t cert_flow_hash(const mt_packet *pk)
{
    size_t alen = pk->version == 4 ? 4 : 16;
    uint64_t h = 1469598103934665603ULL;
    uint8_t ports[5] = {(uint8_t)pk->version, (uint8_t)(pk->sport >> 8), (uint8_t)pk->sport,
                        (uint8_t)(pk->dport >> 8), (uint8_t)pk->dport};
    for (size_t i = 0; i < alen; i++)
        h = (h ^ pk->src[i]) * 1099511628211ULL;
    for (size_t i = 0; i < alen; i++)
        h = (h ^ pk->dst[i]) * 1099511628211ULL;
    for (size_t i = 0; i < sizeof(ports); i++)
        h = (h ^ ports[i]) * 1099511628211ULL;
    return h ? h : 1;
}

/* Whether the records a flight's first segment holds leave the handshake open: every record
 * header in it is a handshake record's (a ChangeCipherSpec or application-data record after the
 * ServerHello is TLS 1.3 or a resumed session: no plaintext certificate follows). */
static int cert_flight_open(const uint8_t *p, uint32_t n)
{
    uint32_t pos = 0;
    while (pos < n) {
        if (p[pos] != 22)
            return 0;
        if (n - pos < 5)
            return 1;
        pos += 5 + mt_be16(p + pos + 3);
    }
    return 1;
}

/* Whether a TCP segment with payload goes to workers/certs.py: one from a server opening a
 * ServerHello record, or one of a flight followed here. The flight stops being followed when a
 * segment opens with another record type at a record boundary (the server's next flight), when
 * its budget is spent, or when its first segment already closed the handshake. */
static int cert_segment(Tables *t, const mt_packet *pk, const uint8_t *pl, uint32_t pn)
{
    if (!t->watching && !cert_start(pl, pn))
        return 0;
    uint64_t h = cert_flow_hash(pk);
    cert_watch *w = &t->watch[h & (CERT_WATCH_SLOTS - 1)];
    if (w->key == h) {
        if (cert_start(pl, pn)) {
            w->budget = CERT_WATCH_BUDGET_BYTES;     /* a new handshake on the same port pair */
            return 1;
        }
        if ((pn >= 3 && pl[0] >= 20 && pl[0] <= 23 && pl[0] != 22 && pl[1] == 3 && pl[2] <= 3) ||
            pn >= w->budget) {
            w->key = 0;
            t->watching--;
        } else {
            w->budget -= pn;
        }
        return 1;
    }
    if (!cert_start(pl, pn) || mt_client_is_src(pk))
        return 0;
    if (cert_flight_open(pl, pn)) {
        if (!w->key)
            t->watching++;
        w->key = h;
        w->budget = CERT_WATCH_BUDGET_BYTES;
    }
    return 1;
}

/* workers.tls: returns the server name length (written to out), 0 for none, -1 when Python must
 * decide (a ClientHello continued in further records). */
static int tls_sni(const uint8_t *p, uint32_t n, uint8_t *out)
{
    uint32_t record_len = mt_be16(p + 3);
    if (record_len == 0 || record_len > (1u << 14))
        return 0;
    if (n < 9)
        return 0;
    uint32_t record_end = 5 + record_len;
    uint32_t hello_end = 9 + (((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 8) | p[8]);
    if (!(record_end >= hello_end || record_end >= n))
        return -1;
    uint32_t start = 5, end = record_end < n ? record_end : n;
    if (end - start < 4 || p[start] != 1)
        return 0;
    uint32_t hello_len = ((uint32_t)p[start + 1] << 16) | ((uint32_t)p[start + 2] << 8) | p[start + 3];
    uint64_t pos = start + 4;
    if (pos + hello_len < end)
        end = (uint32_t)(pos + hello_len);
    pos += 34;
    if (pos + 1 > end)
        return 0;
    uint32_t sid = p[pos];
    if (sid > 32)
        return 0;
    pos += 1 + sid;
    if (pos + 2 > end)
        return 0;
    uint32_t suites = mt_be16(p + pos);
    if (suites < 2 || (suites & 1))
        return 0;
    pos += 2 + suites;
    if (pos + 1 > end)
        return 0;
    uint32_t comp = p[pos];
    if (comp < 1)
        return 0;
    pos += 1 + comp;
    if (pos + 2 > end)
        return 0;
    uint64_t ext_end = pos + 2 + mt_be16(p + pos);
    if (ext_end > end)
        ext_end = end;
    pos += 2;
    while (ext_end >= pos + 4) {
        uint32_t type = mt_be16(p + pos), len = mt_be16(p + pos + 2);
        pos += 4;
        if (pos + len > ext_end)
            return 0;
        if (type == 0) {
            uint64_t e = pos + len;
            if (e - pos < 2)
                return 0;
            uint64_t list_end = pos + 2 + mt_be16(p + pos);
            if (list_end > e)
                return 0;
            pos += 2;
            while (list_end >= pos + 3) {
                uint32_t nt = p[pos], nl = mt_be16(p + pos + 1);
                pos += 3;
                if (pos + nl > list_end)
                    return 0;
                if (nt == 0) {
                    if (nl == 0 || nl > 255)
                        return 0;
                    uint32_t l = 0;
                    for (uint32_t i = 0; i < nl; i++) {
                        uint8_t c = p[pos + i];
                        if (c <= 0x20 || c >= 0x7F)
                            return 0;
                        out[l++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
                    }
                    if (l && out[l - 1] == '.')
                        l--;
                    return (int)l;
                }
                pos += nl;
            }
            return 0;
        }
        pos += len;
    }
    return 0;
}

/* ---- HTTP -------------------------------------------------------------------------------- */

static int is_token_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+.^_`|~-", c) != NULL);
}

/* workers.http.looks_like_http_request */
static int looks_like_http(const uint8_t *p, uint32_t n)
{
    uint32_t lim = n < 33 ? n : 33;
    const uint8_t *sp = memchr(p, ' ', lim);
    if (!sp || sp == p)
        return 0;
    uint32_t space = (uint32_t)(sp - p);
    if (space > 32)
        return 0;
    for (uint32_t i = 0; i < space; i++)
        if (!is_token_char(p[i]))
            return 0;
    uint32_t head = n < MAX_HEAD_BYTES ? n : MAX_HEAD_BYTES;
    const uint8_t *eol = memchr(p, '\n', head);
    uint32_t line = eol ? (uint32_t)(eol - p) : head;
    return find_bytes(p, line, " HTTP/", 6) != NULL;
}

typedef struct {
    const uint8_t *method, *target, *host, *ua, *body;
    uint32_t method_len, target_len, host_len, ua_len, body_len;
    int have_host, have_ua;
} http_req;

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* bytes.strip(): ASCII whitespace */
static void strip(const uint8_t **s, uint32_t *n)
{
    while (*n && is_ws((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_ws((*s)[*n - 1]))
        (*n)--;
}

/* str.strip() on ASCII text: also the separators \x1c-\x1f (str.isspace() is true for them); the
 * Latin-1 ones (\x85, \xa0) never get here (text with high bytes goes to Python) */
static int is_str_ws(uint8_t c) { return is_ws(c) || (c >= 0x1c && c <= 0x1f); }

static void str_strip(const uint8_t **s, uint32_t *n)
{
    while (*n && is_str_ws((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_str_ws((*s)[*n - 1]))
        (*n)--;
}

/* An absolute-form target starts with a URI scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
 * (RFC 3986); workers/pipeline.py _ABSOLUTE. */
static int is_scheme(const uint8_t *p, uint32_t n)
{
    if (!n || !((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')))
        return 0;
    for (uint32_t i = 1; i < n; i++) {
        uint8_t c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* lower_equals(s, n, "word"): s is the lower-case literal word, ASCII letters in any case */
#define lower_equals(s, n, word) lower_equals_n(s, n, word, sizeof(word) - 1)
static int lower_equals_n(const uint8_t *s, uint32_t n, const char *word, size_t wl)
{
    if (n != wl)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (uint8_t)word[i])
            return 0;
    }
    return 1;
}

/* workers.http.parse_http_request; 1 when parsed. */
static int parse_http(const uint8_t *p, uint32_t n, http_req *r)
{
    memset(r, 0, sizeof(*r));
    uint32_t lim = n < MAX_HEAD_BYTES ? n : MAX_HEAD_BYTES;
    const uint8_t *crlf = find_bytes(p, lim, "\r\n", 2);
    if (!crlf)
        return 0;
    uint32_t eol = (uint32_t)(crlf - p);
    const uint8_t *s1 = memchr(p, ' ', eol);
    if (!s1)
        return 0;
    const uint8_t *s2 = memchr(s1 + 1, ' ', eol - (uint32_t)(s1 + 1 - p));
    if (!s2 || memchr(s2 + 1, ' ', eol - (uint32_t)(s2 + 1 - p)))
        return 0;
    r->method = p;
    r->method_len = (uint32_t)(s1 - p);
    r->target = s1 + 1;
    r->target_len = (uint32_t)(s2 - s1 - 1);
    const uint8_t *ver = s2 + 1;
    uint32_t ver_len = eol - (uint32_t)(ver - p);
    if (ver_len < 5 || memcmp(ver, "HTTP/", 5) != 0 || !r->target_len)
        return 0;
    if (r->method_len < 1 || r->method_len > 32)
        return 0;
    for (uint32_t i = 0; i < r->method_len; i++)
        if (!is_token_char(p[i]))
            return 0;
    /* head_end: \r\n\r\n at or after eol, ending before MAX_HEAD_BYTES */
    const uint8_t *he = lim >= eol ? find_bytes(p + eol, lim - eol, "\r\n\r\n", 4) : NULL;
    uint32_t head_start = eol + 2, head_stop;
    int complete = he != NULL;
    if (complete)
        head_stop = (uint32_t)(he - p);
    else
        head_stop = lim;
    r->have_host = r->have_ua = 0;
    uint32_t pos = head_start;
    while (pos < head_stop) {
        const uint8_t *e = head_stop > pos ? find_bytes(p + pos, head_stop - pos, "\r\n", 2) : NULL;
        uint32_t line_end = e ? (uint32_t)(e - p) : head_stop;
        if (!e && !complete)
            break; /* the last, incomplete line of an unfinished head does not count */
        const uint8_t *line = p + pos;
        uint32_t ll = line_end - pos;
        const uint8_t *colon = memchr(line, ':', ll);
        if (colon && colon > line) {
            uint32_t nl = (uint32_t)(colon - line);
            if (!is_ws(line[0]) && !is_ws(line[nl - 1])) {
                const uint8_t *v = colon + 1;
                uint32_t vl = ll - nl - 1;
                strip(&v, &vl);
                if (!r->have_host && lower_equals(line, nl, "host")) {
                    r->host = v;
                    r->host_len = vl;
                    r->have_host = 1;
                } else if (!r->have_ua && lower_equals(line, nl, "user-agent")) {
                    r->ua = v;
                    r->ua_len = vl;
                    r->have_ua = 1;
                }
            }
        }
        pos = line_end + 2;
    }
    if (complete) {
        r->body = he + 4;
        r->body_len = n - (uint32_t)(he + 4 - p);
    } else {
        r->body = NULL;
        r->body_len = 0;
    }
    return 1;
}

/* These two run over every request's target, host and user agent: eight bytes at a time. */
#define ONES8 0x0101010101010101ULL
#define HIGH8 0x8080808080808080ULL

static int has_high_bytes(const uint8_t *s, uint32_t n)
{
    uint64_t acc = 0, w;
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= s[i];
    return (acc & HIGH8) != 0;
}

/* A-Z to a-z, every other byte (high ones too) unchanged. Per byte of a word: the low seven bits
 * plus 0x80 - 'A' carry into the top bit when they are >= 'A', plus 0x80 - 'Z' - 1 when > 'Z'
 * (neither sum leaves the byte); a byte is a capital when the first is set, the second not, and
 * its own top bit not; 0x80 >> 2 is the 0x20 that lowers it. */
static void lower_ascii(uint8_t *s, uint32_t n)
{
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t low7 = w & ~HIGH8;
        uint64_t upper = (low7 + (0x80 - 'A') * ONES8) & ~(low7 + (0x80 - 'Z' - 1) * ONES8) & ~w & HIGH8;
        w ^= upper >> 2;
        memcpy(s + i, &w, 8);
    }
    for (; i < n; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] += 32;
}

/* workers.pipeline.normalize_host on a lower-case ASCII value: into out, returns the length. */
static uint32_t normalize_host(const uint8_t *s, uint32_t n, uint8_t *out)
{
    str_strip(&s, &n);
    if (n && s[0] == '[') {
        const uint8_t *close = memchr(s, ']', n);
        if (close) {
            s += 1;
            n = (uint32_t)(close - s);
        }
    } else {
        uint32_t colons = 0, at = 0;
        for (uint32_t i = 0; i < n; i++)
            if (s[i] == ':') {
                colons++;
                at = i;
            }
        if (colons == 1)
            n = at;
    }
    while (n && s[n - 1] == '.')
        n--;
    memcpy(out, s, n);
    return n;
}

static int is_word(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }

/* re.sub(r"(\w+=)[^&=]+", r"\1", s) for ASCII s */
static uint32_t blank_values(const uint8_t *s, uint32_t n, uint8_t *out)
{
    uint32_t i = 0, o = 0;
    while (i < n) {
        if (is_word(s[i])) {
            uint32_t j = i;
            while (j < n && is_word(s[j]))
                j++;
            if (j < n && s[j] == '=' && j + 1 < n && s[j + 1] != '&' && s[j + 1] != '=') {
                memcpy(out + o, s + i, j + 1 - i);
                o += j + 1 - i;
                uint32_t k = j + 1;
                while (k < n && s[k] != '&' && s[k] != '=')
                    k++;
                i = k;
                continue;
            }
        }
        out[o++] = s[i++];
    }
    return o;
}

typedef struct {
    const uint8_t *s;
    uint32_t n;
} span;

static uint32_t count_char(const uint8_t *s, uint32_t n, uint8_t c)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        k += s[i] == c;
    return k;
}

static uint32_t rstrip_slash(const uint8_t *s, uint32_t n)
{
    while (n && s[n - 1] == '/')
        n--;
    return n;
}

/* matchers.urls.UrlMatcher.match: could any candidate hit? `buf` is scratch space. */
static int url_candidate(const mt_table *t, const mt_filter *f, const uint8_t *host, uint32_t hn, const uint8_t *path, uint32_t pn,
                         const uint8_t *post, uint32_t postn, int have_post, uint8_t *buf)
{
    span checks[8];
    int nc = 0;
    uint8_t *blanked = buf, *postform = buf + R, *extra = buf + 2 * R, *key = buf + 3 * R;
    checks[nc++] = (span){path, rstrip_slash(path, pn)};
    const uint8_t *q = memchr(path, '?', pn);
    if (q) {
        uint32_t before = (uint32_t)(q - path);
        checks[nc++] = (span){path, rstrip_slash(path, before)};
        const uint8_t *eq = memchr(path, '=', pn);
        if (eq)
            checks[nc++] = (span){path, (uint32_t)(eq - path) + 1};
        uint32_t bn = blank_values(path, pn, blanked);
        int seen = 0;
        for (int i = 0; i < nc; i++)
            if (checks[i].n == bn && memcmp(checks[i].s, blanked, bn) == 0)
                seen = 1;
        if (!seen) {
            checks[nc++] = (span){blanked, bn};
            if (count_char(blanked, bn, '/') > 1) {
                uint32_t k = bn;
                while (k && blanked[k - 1] != '/')
                    k--;
                extra[0] = '/';
                memcpy(extra + 1, blanked + k, bn - k);
                checks[nc++] = (span){extra, bn - k + 1};
            }
        }
    } else if (have_post && postn) {
        memcpy(postform, path, pn);
        postform[pn] = '?';
        memcpy(postform + pn + 1, post, postn);
        checks[nc++] = (span){postform, pn + 1 + postn};
    }
    span last = checks[nc - 1];
    if (count_char(last.s, last.n, '/') > 1) {
        uint32_t k = last.n;
        while (k && last.s[k - 1] != '/')
            k--;
        checks[nc++] = (span){last.s, k - 1};   /* last[:last.rfind('/')] */
        span first = checks[0];
        uint32_t cut = first.n;
        while (cut && first.s[cut - 1] != '/')
            cut--;
        const uint8_t *tail = first.s + cut - 1;  /* first[first.rfind('/'):] ... */
        uint32_t tn = first.n - (cut - 1);
        const uint8_t *qq = memchr(tail, '?', tn);
        if (qq)
            tn = (uint32_t)(qq - tail);          /* ... .split('?')[0] */
        checks[nc++] = (span){tail, tn};
    }
    /* scan_http calls this only for a table with keys, and Tables_init gives every such table a
     * key filter (the artifact's, or one built at load). All candidates' filter words are
     * requested first (their misses overlap), then only the candidates the filter passes are
     * probed in the table, rebuilding their keys. */
    uint64_t hp[8], hk[8], hh;
    memcpy(key, host, hn);
    for (int i = 0; i < nc; i++) {
        if (!checks[i].n)
            continue;
        hp[i] = mt_filter_hash(checks[i].s, checks[i].n);
        mt_filter_prefetch(f, hp[i]);
        memcpy(key + hn, checks[i].s, checks[i].n);
        hk[i] = mt_filter_hash(key, hn + checks[i].n);
        mt_filter_prefetch(f, hk[i]);
    }
    key[hn] = '/';
    hh = mt_filter_hash(key, hn + 1);
    for (int i = 0; i < nc; i++) {
        if (!checks[i].n)
            continue;
        if (mt_filter_maybe(f, hp[i]) && mt_table_find(t, checks[i].s, checks[i].n) >= 0)
            return 1;
        if (mt_filter_maybe(f, hk[i])) {
            memcpy(key + hn, checks[i].s, checks[i].n);
            if (mt_table_find(t, key, hn + checks[i].n) >= 0)
                return 1;
        }
    }
    if (!mt_filter_maybe(f, hh))
        return 0;
    key[hn] = '/';
    return mt_table_find(t, key, hn + 1) >= 0;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* unquote(body).lower() for ASCII results; -1 when Python must decide (non-ASCII). */
static int unquote_lower(const uint8_t *s, uint32_t n, uint8_t *out)
{
    uint32_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '%' && i + 2 < n) {
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h >= 0 && l >= 0) {
                c = (uint8_t)(h * 16 + l);
                i += 2;
            }
        }
        if (c >= 0x80)
            return -1;
        out[o++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    return (int)o;
}

/* Whether a user agent may match a user-agent trail (workers/pipeline.py fast_tables: the
 * lower-case substrings, the literals a regular expression requires, and an empty pattern for a
 * regular expression that requires none, which every user agent may match). */
static int ua_hit(const Tables *t, const uint8_t *ua, uint32_t n, uint8_t *buf)
{
    memcpy(buf, ua, n);
    lower_ascii(buf, n);
    for (uint32_t i = 0; i < t->n_uas; i++)
        if (!t->ua_len[i] || (t->ua_len[i] <= n && memmem(buf, n, t->ua_blob + t->ua_off[i], t->ua_len[i])))
            return 1;
    return 0;
}

/* ---- heuristics, per packet ------------------------------------------------------------------ */

/* Python's ts_ns // 1000 (floor division, also for times before 1970) */
static inline int64_t floor_us(int64_t ns)
{
    int64_t q = ns / 1000;
    return (ns % 1000 < 0) ? q - 1 : q;
}

/* HeuristicSettings.is_local */
static int is_local(const Heuristics *H, int version, const uint8_t *addr)
{
    for (uint32_t k = 0; k < H->n_nets; k++) {
        const local_net *net = &H->nets[k];
        if (net->version != version)
            continue;
        int full = net->prefix / 8, rest = net->prefix % 8;
        if (memcmp(addr, net->addr, full) != 0)
            continue;
        if (rest && ((addr[full] ^ net->addr[full]) & (uint8_t)(0xFF << (8 - rest))))
            continue;
        return 1;
    }
    return 0;
}

static int ensure_buf(Heuristics *H, size_t n)
{
    if (n <= H->buf_cap)
        return 0;
    size_t cap = H->buf_cap ? H->buf_cap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *buf = realloc(H->buf, cap);
    if (!buf)
        return -1;
    H->buf = buf;
    H->buf_cap = cap;
    return 0;
}

/* A window key: two 16-byte fields and the IP version, each written whole (see window.h). */
static inline void window_key(uint8_t *key, int version, const uint8_t *a, const uint8_t *b)
{
    uint32_t v = (uint32_t)version;
    memcpy(key, a, 16);
    memcpy(key + 16, b, 16);
    memcpy(key + 32, &v, 4);
}

/* ScanHeuristics.observe, in two steps: which windows a packet feeds and under which keys
 * (computed, and their index lines asked for, before the trail lookups), then the observations
 * (after them, when those lines have arrived). */
typedef struct {
    int port, infection, udp;
    uint32_t port_tag, infection_tag, udp_tag, udp_port;
    uint8_t port_key[MT_DW_KEY_BYTES], infection_key[MT_DW_KEY_BYTES], udp_key[MT_DW_KEY_BYTES];
} scan_plan;

static void heuristic_scans_plan(Heuristics *H, const mt_packet *pk, scan_plan *sp)
{
    sp->port = sp->infection = sp->udp = 0;
    if (pk->proto == 6) {
        if (pk->tcp_flags & 0x14)
            return;                            /* ACK or RST: not a probe */
        if (H->port_on) {
            sp->port = 1;
            window_key(sp->port_key, pk->version, pk->src, pk->dst);
            sp->port_tag = mt_dw_tag(&H->port, sp->port_key);
            mt_dw_prefetch(&H->port, sp->port_tag);
        }
        if (H->infection_on && ((H->infection_port[pk->dport >> 3] >> (pk->dport & 7)) & 1) &&
            is_local(H, pk->version, pk->src)) {
            uint64_t port[2] = {pk->dport, 0};
            sp->infection = 1;
            window_key(sp->infection_key, pk->version, pk->src, (const uint8_t *)port);
            sp->infection_tag = mt_dw_tag(&H->infection, sp->infection_key);
            mt_dw_prefetch(&H->infection, sp->infection_tag);
        }
        return;
    }
    if (pk->proto == 17 && H->udp_on) {
        /* counted for the sender, keyed (sender, receiver); not a probe: DNS, a payload too big,
         * a traceroute port, a well-known port answering a higher one (scan.py's rules) */
        if (pk->sport == 53 || pk->dport == 53 || pk->payload_len > H->udp_probe_max_bytes)
            return;
        if ((pk->dport >= H->trace_lo && pk->dport < H->trace_hi) ||
            (pk->sport < MT_WELL_KNOWN_PORTS && pk->dport >= MT_WELL_KNOWN_PORTS))
            return;
        sp->udp = 1;
        sp->udp_port = pk->dport;
        window_key(sp->udp_key, pk->version, pk->src, pk->dst);
        sp->udp_tag = mt_dw_tag(&H->udp, sp->udp_key);
        mt_dw_prefetch(&H->udp, sp->udp_tag);
    }
}

/* The verdict bits after this packet, or -1 when out of memory. */
static int heuristic_scans(Heuristics *H, const mt_packet *pk, const scan_plan *sp, int64_t ts_us)
{
    int bits = 0, r;
    if (sp->port) {
        if ((r = mt_dw_observe_tagged(&H->port, sp->port_key, sp->port_tag, pk->dport, 0, ts_us)) < 0)
            return -1;
        if (r)
            bits |= V_PORT_SCAN;
    }
    if (sp->infection) {
        r = mt_dw_observe_tagged(&H->infection, sp->infection_key, sp->infection_tag, mt_load64(pk->dst),
                                 mt_load64(pk->dst + 8), ts_us);
        if (r < 0)
            return -1;
        if (r)
            bits |= V_INFECTION_SCAN;
    }
    if (sp->udp) {
        if ((r = mt_dw_observe_tagged(&H->udp, sp->udp_key, sp->udp_tag, sp->udp_port, 0, ts_us)) < 0)
            return -1;
        if (r)
            bits |= V_UDP_SCAN;
    }
    return bits;
}

/* ScanHeuristics.observe_request for a parsed request, in two steps as above. The segment is
 * stored as a keyed 64-bit fingerprint of its Latin-1 lower-case bytes (and its length). */
typedef struct {
    int counts;
    uint32_t tag;
    uint64_t lo, hi;
    uint8_t key[MT_DW_KEY_BYTES];
} web_plan;

static int heuristic_web_plan(Heuristics *H, const mt_packet *pk, const http_req *r, web_plan *wp)
{
    wp->counts = 0;
    if (!r->target_len || r->target[0] != '/')
        return 0;
    const uint8_t *seg = r->target + 1;
    uint32_t n = r->target_len - 1;
    const uint8_t *q = memchr(seg, '?', n);
    if (q)
        n = (uint32_t)(q - seg);
    const uint8_t *slash = memchr(seg, '/', n);
    if (slash)
        n = (uint32_t)(slash - seg);
    /* str.lower() on Latin-1 text: A-Z and the accented capitals (not the multiplication sign) */
#define LATIN1_UPPER(c) (((c) >= 'A' && (c) <= 'Z') || ((c) >= 0xC0 && (c) <= 0xDE && (c) != 0xD7))
    const uint8_t *lowered = seg;
    for (uint32_t i = 0; i < n; i++) {
        if (LATIN1_UPPER(seg[i])) {            /* only then a lower-case copy */
            if (ensure_buf(H, n) < 0)
                return -1;
            for (uint32_t k = 0; k < n; k++)
                H->buf[k] = LATIN1_UPPER(seg[k]) ? seg[k] + 32 : seg[k];
            lowered = H->buf;
            break;
        }
    }
#undef LATIN1_UPPER
    wp->counts = 1;
    wp->lo = mt_keyed_hash(&H->hk, lowered, n);
    wp->hi = n;
    if (mt_client_is_src(pk))                  /* (client, server), as dispatch sees them */
        window_key(wp->key, pk->version, pk->src, pk->dst);
    else
        window_key(wp->key, pk->version, pk->dst, pk->src);
    wp->tag = mt_dw_tag(&H->web, wp->key);
    mt_dw_prefetch(&H->web, wp->tag);
    return 0;
}

static int heuristic_web(Heuristics *H, const web_plan *wp, int64_t ts_us)
{
    if (!wp->counts)
        return 0;
    int v = mt_dw_observe_tagged(&H->web, wp->key, wp->tag, wp->lo, wp->hi, ts_us);
    return v < 0 ? -1 : v ? V_WEB_SCAN : 0;
}

/* urllib.parse.unquote (UTF-8, errors="replace") followed by str.lower(), reduced to what ASCII
 * literals can see: ASCII characters stay (the search folds case), every other character becomes
 * 0x80 bytes, except the two whose lower case is ASCII: U+0130 (lower "i" + U+0307) gives "i"
 * and 0x80, U+212A (Kelvin sign, lower "k") gives "k". Only %-escapes form UTF-8 sequences (raw
 * non-ASCII bytes are Latin-1 characters of their own), and a lead byte is never a continuation,
 * so those two are exactly "%C4%B0" and "%E2%84%AA". A literal '+' at or after `plus_from` reads
 * as a space (the form-encoded reading, workers/http.py decoded_target / decoded_form: '+' is
 * replaced before the escapes are decoded, so "%2B" stays '+'); pass n for the plain reading.
 * Writes at most n bytes; *nonascii says whether any non-ASCII character was seen. */
static size_t unquote_ascii(const uint8_t *s, size_t n, uint8_t *out, int *nonascii, size_t plus_from)
{
    size_t o = 0, i = 0;
    *nonascii = 0;
#define ESCAPED(at) ((at) + 2 < n && s[at] == '%' && hexval(s[(at) + 1]) >= 0 && hexval(s[(at) + 2]) >= 0)
#define ESCAPE(at) ((uint8_t)(hexval(s[(at) + 1]) * 16 + hexval(s[(at) + 2])))
    while (i < n) {
        uint8_t c = s[i];
        if (ESCAPED(i)) {
            uint8_t v = ESCAPE(i);
            i += 3;
            if (v < 0x80) {
                out[o++] = v;
                continue;
            }
            *nonascii = 1;
            if (v == 0xC4 && ESCAPED(i) && ESCAPE(i) == 0xB0) {
                out[o++] = 'i';
                out[o++] = 0x80;
                i += 3;
            } else if (v == 0xE2 && ESCAPED(i) && ESCAPE(i) == 0x84 && ESCAPED(i + 3) && ESCAPE(i + 3) == 0xAA) {
                out[o++] = 'k';
                i += 6;
            } else {
                out[o++] = 0x80;
            }
            continue;
        }
        if (c >= 0x80) {
            *nonascii = 1;
            c = 0x80;
        } else if (c == '+' && i >= plus_from) {
            c = ' ';
        }
        out[o++] = c;
        i++;
    }
#undef ESCAPED
#undef ESCAPE
    return o;
}

/* A user agent (ASCII) whose unquote().strip().lower() holds a suspicious pattern and no
 * whitelisted one (workers/heuristics/http.py user_agent_pattern). 1/0, -1 when out of memory. */
static int heuristic_user_agent(Heuristics *H, const uint8_t *ua, uint32_t n)
{
    const uint8_t *text = ua;
    size_t m = n;
    int nonascii = 0;
    if (memchr(ua, '%', n)) {
        if (ensure_buf(H, n) < 0)
            return -1;
        m = unquote_ascii(ua, n, H->buf, &nonascii, n);
        text = H->buf;
    }
    uint8_t flags = 0;
    mt_lits_search(&H->ua, text, m, 0, &flags, NULL);
    return (flags & UA_SUSPICIOUS) && !(flags & UA_WHITELISTED);
}

enum { MODE_NEVER, MODE_FORMULA, MODE_ALWAYS };

/* Could request_attack() find a pattern in one of the decoded readings of this text (a path, where
 * '+' is a space from `plus_from`, just past its first '?', on; or a body, plus_from 0)? Its own
 * gate (a REQUEST_NEEDLES literal in a lower-case reading), then, for ASCII text, what the
 * patterns' literals allow. The literals found in both readings are pooled: the formula only asks
 * for literals, never for their absence, so it holds on the pool whenever it holds on one reading
 * (a superset, as the prefilter must be). 1/0, -1 when out of memory. */
static int heuristic_request_text(Heuristics *H, const uint8_t *s, size_t n, size_t plus_from)
{
    if (H->req_always == MODE_NEVER)
        return 0;
    const uint8_t *text = s;
    size_t m = n;
    int nonascii = has_high_bytes(s, (uint32_t)n);
    int form = plus_from < n && memchr(s + plus_from, '+', n - plus_from) != NULL;
    if (form || memchr(s, '%', n)) {
        if (ensure_buf(H, 2 * n) < 0)
            return -1;
        m = unquote_ascii(s, n, H->buf, &nonascii, n);
        text = H->buf;
    }
    memset(H->seen, 0, H->seen_words * sizeof(uint64_t));
    uint8_t flags = 0;
    mt_lits_search(&H->req, text, m, 0, &flags, H->seen);
    if (form) {
        int form_nonascii;
        size_t fm = unquote_ascii(s, n, H->buf + n, &form_nonascii, plus_from);
        mt_lits_search(&H->req, H->buf + n, fm, 0, &flags, H->seen);
    }
    if (!(flags & REQ_NEEDLE))
        return 0;
    if (nonascii || H->req_always == MODE_ALWAYS)
        return 1;                              /* Unicode case folding: let Python decide */
    return mt_trigger_eval(&H->req_t, &H->req_f, H->seen, H->seen_words);
}

static int listed_in(const mt_litlist *l, const uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->len[i] == n && memcmp(l->blob + l->off[i], s, n) == 0)
            return 1;
    return 0;
}

static int contains_any(const mt_litlist *l, const uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->len[i] <= n && memmem(s, n, l->blob + l->off[i], l->len[i]))
            return 1;
    return 0;
}

enum { PATH_NOTHING = 0, PATH_FLAG = 1, PATH_FLAG_UNLESS_LOCAL = 2 };

/* The direct-download and suspicious-file-name part of Worker._request_heuristics, on the path
 * it sees (lower case, "//" collapsed): exact for the download branch, the patterns' literals for
 * the file names. The download event also needs a server outside the local networks: that part
 * is the caller's (PATH_FLAG_UNLESS_LOCAL), so the verdict is the path's alone. */
static int download_verdict(Heuristics *H, const uint8_t *path, uint32_t pn)
{
    if (!memchr(path, '.', pn))
        return PATH_NOTHING;
    const uint8_t *q = memchr(path, '?', pn);
    uint32_t tn = q ? (uint32_t)(q - path) : pn;
    uint32_t f = tn;
    while (f && path[f - 1] != '/')
        f--;
    const uint8_t *fname = path + f;
    uint32_t fl = tn - f, dot = fl;
    while (dot && fname[dot - 1] != '.')
        dot--;
    if (dot >= 2 && listed_in(&H->dl_ext, fname + dot - 1, fl - dot + 1)) {
        /* download_extension(path) found one: the event's own conditions decide, nothing else */
        if (contains_any(&H->dl_white, path, pn) || (q && memchr(q + 1, '=', pn - tn - 1)) || dot - 1 >= 10)
            return PATH_NOTHING;
        return PATH_FLAG_UNLESS_LOCAL;
    }
    if (H->fname_always != MODE_FORMULA)
        return H->fname_always == MODE_ALWAYS ? PATH_FLAG : PATH_NOTHING;
    memset(H->seen, 0, H->seen_words * sizeof(uint64_t));
    uint8_t flags = 0;
    mt_lits_search(&H->fname, fname, fl, 0, &flags, H->seen);
    return mt_trigger_eval(&H->fname_t, &H->fname_f, H->seen, H->seen_words) ? PATH_FLAG : PATH_NOTHING;
}

/* What a request's path decides (request patterns, downloads, file names): a PATH_ verdict, or
 * -1 when out of memory. Remembered by fingerprint. */
static int path_verdict(Heuristics *H, const uint8_t *path, uint32_t pn)
{
    uint64_t fp = mt_keyed_hash(&H->hk, path, pn) | 1;
    uint32_t slot = (uint32_t)(fp >> 40) % MEMO_SLOTS;
    if (H->path_memo.fp[slot] == fp)
        return H->path_memo.verdict[slot];
    int v = PATH_NOTHING;
    if (H->request_on) {
        const uint8_t *q = memchr(path, '?', pn);   /* the query, where '+' is a space */
        v = heuristic_request_text(H, path, pn, q ? (size_t)(q - path) + 1 : pn);
    }
    if (v == PATH_NOTHING && H->download_on)
        v = download_verdict(H, path, pn);
    if (v >= 0) {
        H->path_memo.fp[slot] = fp;
        H->path_memo.verdict[slot] = (uint8_t)v;
    }
    return v;
}

/* heuristic_user_agent, remembered by fingerprint. */
static int user_agent_verdict(Heuristics *H, const uint8_t *ua, uint32_t n)
{
    uint64_t fp = mt_keyed_hash(&H->hk, ua, n) | 1;
    uint32_t slot = (uint32_t)(fp >> 40) % MEMO_SLOTS;
    if (H->ua_memo.fp[slot] == fp)
        return H->ua_memo.verdict[slot];
    int v = heuristic_user_agent(H, ua, n);
    if (v >= 0) {
        H->ua_memo.fp[slot] = fp;
        H->ua_memo.verdict[slot] = (uint8_t)v;
    }
    return v;
}

/* workers/heuristics/http.py needs_response_check */
static int heuristic_response(const Heuristics *H, const uint8_t *pl, uint32_t pn)
{
    uint8_t flags = 0;
    mt_lits_search(&H->resp, pl, pn < H->response_head_bytes ? pn : H->response_head_bytes, 1, &flags, NULL);
    return flags != 0;
}

/* is_bare_ipv4: \A\d+\.[0-9.]+\Z */
static int bare_ipv4(const uint8_t *s, uint32_t n)
{
    uint32_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || i + 1 >= n || s[i] != '.')
        return 0;
    for (i++; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '.'))
            return 0;
    return 1;
}

/* workers/http.py without_default_port: the length of `host` without a trailing ":80". */
static uint32_t without_default_port(const uint8_t *host, uint32_t hn)
{
    return hn >= 3 && memcmp(host + hn - 3, ":80", 3) == 0 ? hn - 3 : hn;
}

/* workers/http.py _split_authority: "host[:port][/path]" (src, n bytes) -> the host without ":80"
 * and "/path". src may lie inside `path` (a CONNECT target is the path itself): the new path is
 * built in `work` first, and `host` is a region of its own. */
static void split_authority(const uint8_t *src, uint32_t n, uint8_t *host, uint32_t *hn, uint8_t *path, uint32_t *pn,
                            uint8_t *work)
{
    const uint8_t *slash = memchr(src, '/', n);
    uint32_t h = slash ? (uint32_t)(slash - src) : n;
    uint32_t np = 1;
    work[0] = '/';
    if (slash) {
        memcpy(work + 1, slash + 1, n - h - 1);
        np += n - h - 1;
    }
    memmove(host, src, h);
    *hn = without_default_port(host, h);
    memcpy(path, work, np);
    *pn = np;
}

/* An HTTP request (already parsed). 1 to hand the frame to Python, 0 not, -1 out of memory. */
static int scan_http(Tables *t, Heuristics *H, const mt_packet *pk, const http_req *r)
{
    uint8_t *buf = t->scratch;
    uint8_t *host = buf + SCR_HOST, *path = buf + SCR_PATH, *name = buf + SCR_NAME, *work = buf + SCR_WORK;
    uint32_t hn, pn;
    int rc;
    if (has_high_bytes(r->target, r->target_len) || (r->have_host && has_high_bytes(r->host, r->host_len)) ||
        (r->have_ua && has_high_bytes(r->ua, r->ua_len)))
        return 1;
    memcpy(path, r->target, r->target_len);
    pn = r->target_len;
    lower_ascii(path, pn);
    if (H && H->missing_host_on && !(r->have_host && r->host_len))
        return 1;
    if (H && H->proxy_on && pk->dport == 80 && pn >= 7 && memcmp(path, "http://", 7) == 0 &&
        contains_any(&H->proxy_words, path, pn))
        return 1;
    if (r->have_host && r->host_len) {
        const uint8_t *hv = r->host;
        uint32_t hl = r->host_len;
        str_strip(&hv, &hl);                     /* req.host.strip().lower() */
        memcpy(host, hv, hl);
        hn = hl;
        lower_ascii(host, hn);
        hn = without_default_port(host, hn);
        if (H && H->iot_on && bare_ipv4(host, hn) && !is_local(H, pk->version, pk->dst))
            return 1;
        uint32_t nn = normalize_host(host, hn, name);
        if (domain_candidate(t, name, nn))
            return 1;
    } else {
        if (pk->version != 4)
            return 1;                            /* the IPv6 text form: let Python write it */
        hn = (uint32_t)snprintf((char *)host, 16, "%u.%u.%u.%u", pk->dst[0], pk->dst[1], pk->dst[2], pk->dst[3]);
    }
    int connect = lower_equals(r->method, r->method_len, "connect");
    const uint8_t *scheme = find_bytes(path, pn, "://", 3);
    if (scheme && !is_scheme(path, (uint32_t)(scheme - path)))
        scheme = NULL;                           /* "://" later in a path is not absolute form */
    if (scheme || connect) {
        /* absolute form ("scheme://authority/path") or CONNECT ("authority/path"): the target
         * names the real host */
        const uint8_t *authority = scheme ? scheme + 3 : path;
        split_authority(authority, pn - (uint32_t)(authority - path), host, &hn, path, &pn, work);
        uint32_t nn = normalize_host(host, hn, name);
        if (domain_candidate(t, name, nn))
            return 1;
    }
    if (r->have_ua && r->ua_len && t->n_uas && ua_hit(t, r->ua, r->ua_len, buf + SCR_UA))
        return 1;
    if (H && H->ua_on && r->have_ua && r->ua_len && (rc = user_agent_verdict(H, r->ua, r->ua_len)) != 0)
        return rc;
    /* path.replace("//", "/"): one left-to-right pass, as str.replace does */
    uint32_t o = 0;
    for (uint32_t i = 0; i < pn; i++) {
        if (path[i] == '/' && i + 1 < pn && path[i + 1] == '/') {
            path[o++] = '/';
            i++;
            continue;
        }
        path[o++] = path[i];
    }
    pn = o;
    if (H && (H->request_on || H->download_on)) {
        rc = path_verdict(H, path, pn);
        if (rc < 0 || rc == PATH_FLAG || (rc == PATH_FLAG_UNLESS_LOCAL && !is_local(H, pk->version, pk->dst)))
            return rc < 0 ? -1 : 1;
        if (H->request_on && r->body_len && (rc = heuristic_request_text(H, r->body, r->body_len, 0)) != 0)
            return rc;
    }
    if (!t->have[S_URLS] || !t->urls.count)
        return 0;
    int have_post = r->body_len && lower_equals(r->method, r->method_len, "post");
    int postn = 0;
    uint8_t *post = work;
    if (have_post) {
        if (r->body_len > MAX_HEAD_BYTES)
            return 1;
        postn = unquote_lower(r->body, r->body_len, post);
        if (postn < 0)
            return 1;
    }
    return url_candidate(&t->urls, &t->urls_filter, host, hn, path, pn, post, (uint32_t)postn, have_post, buf + SCR_URL);
}

/* ---- the batch scan ------------------------------------------------------------------------- */

static PyObject *scan(PyObject *self, PyObject *args)
{
    Tables *t;
    PyObject *hobj = Py_None;
    Py_buffer buf, offsets, caplens, linktypes, ts;
    extern PyTypeObject TablesType, HeuristicsType;
    if (!PyArg_ParseTuple(args, "O!y*y*y*y*y*|O", &TablesType, &t, &buf, &offsets, &caplens, &linktypes, &ts, &hobj))
        return NULL;
    PyObject *result = NULL;
    Heuristics *H = NULL;
    uint32_t *flagged = NULL;
    Py_ssize_t n = caplens.len / 4;
    if (offsets.len / 8 != n || linktypes.len / 2 != n || ts.len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "batch arrays differ in length");
        goto done;
    }
    if (n > MAX_BATCH_FRAMES) {
        PyErr_Format(PyExc_ValueError, "a batch holds at most %d frames (%zd given): a flagged frame's index is "
                     "16 bits; split the batch", MAX_BATCH_FRAMES, n);
        goto done;
    }
    if (hobj != Py_None) {
        if (!PyObject_TypeCheck(hobj, &HeuristicsType)) {
            PyErr_SetString(PyExc_TypeError, "scan(): heuristics must be a _fastpath.Heuristics or None");
            goto done;
        }
        H = (Heuristics *)hobj;
        if (!H->ready) {
            PyErr_SetString(PyExc_RuntimeError, "Heuristics not initialised");
            goto done;
        }
        if (H->busy) {
            PyErr_SetString(PyExc_RuntimeError, "Heuristics are in use by another scan");
            goto done;
        }
        if (!H->enabled)
            H = NULL;                          /* use_heuristics = false: the plain trail scan */
    }
    const uint64_t *off = offsets.buf;
    const uint32_t *cap = caplens.buf;
    const uint16_t *lt = linktypes.buf;
    const int64_t *tsn = ts.buf;
    const uint8_t *base = buf.buf;
    uint32_t counts[C_COUNT] = {0};
    flagged = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!flagged) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t nflagged = 0;
    int64_t max_ts = 0;
    int oom = 0;
    uint8_t name[MT_MAX_NAME + 1];
    if (H)
        H->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (off[i] + cap[i] > (uint64_t)buf.len) {
            counts[C_SKIP0 + MT_SKIP_TRUNCATED_LINK]++;
            continue;
        }
        const uint8_t *p = base + off[i];
        mt_packet pk;
        int rc = mt_decode(p, cap[i], lt[i], &pk);
        if (rc != MT_OK) {
            counts[C_SKIP0 + rc]++;
            continue;
        }
        counts[C_DECODED]++;
        if (tsn[i] / 1000 > max_ts)
            max_ts = tsn[i] / 1000;
        int64_t ts_us = floor_us(tsn[i]);
        uint32_t ext[E_COUNT] = {0}, bits = 0;
        scan_plan sp;
        if (H)
            heuristic_scans_plan(H, &pk, &sp);
        int flag = ip_hit(t, pk.version, pk.dst, pk.dport) || ip_hit(t, pk.version, pk.src, pk.sport);
        if (H) {
            /* every decoded frame updates the scan windows, in order, whatever else it is */
            int v = heuristic_scans(H, &pk, &sp, ts_us);
            if (v < 0) {
                oom = 1;
                break;
            }
            bits |= (uint32_t)v;
        }
        const uint8_t *pl = p + pk.payload_off;
        uint32_t pn = pk.payload_len;
        if (pk.proto == 17) {
            if (pk.sport == 53 || pk.dport == 53) {
                int v = scan_dns(t, H, pl, pn, name, ext, ts_us, flag, &bits);
                if (v < 0) {
                    oom = 1;
                    break;
                }
                flag |= v;
            } else if (!flag && pn && (pl[0] & 0x80) && pn >= 5) {
                uint32_t version = mt_be32(pl + 1);
                flag = version == 1 || version == 0x6B3343CF;   /* QUIC v1/v2: the reassembler decides */
            }
        } else if (pk.proto == 6 && pn) {
            if (pk.sport == 53 || pk.dport == 53)
                flag = 1;                                  /* DNS over TCP: rare, Python reads it */
            else if (pn > 5 && pl[0] == 22 && pl[1] == 3 && pl[2] <= 4 && pl[5] == 1) {
                if (!flag) {
                    int l = tls_sni(pl, pn, name);
                    if (l < 0)
                        flag = 1;
                    else if (l > 0) {
                        if (domain_candidate(t, name, (size_t)l))
                            flag = 1;
                        else
                            ext[E_TLS_NAMES]++;
                    }
                }
            } else if (looks_like_http(pl, pn)) {
                http_req r;
                if (parse_http(pl, pn, &r)) {
                    web_plan wp = {0};
                    if (H && H->web_on && heuristic_web_plan(H, &pk, &r, &wp) < 0) {
                        oom = 1;
                        break;
                    }
                    if (!flag) {
                        int v = scan_http(t, H, &pk, &r);
                        if (v < 0) {
                            oom = 1;
                            break;
                        }
                        flag = v;
                    }
                    int v = H ? heuristic_web(H, &wp, ts_us) : 0;
                    if (v < 0) {
                        oom = 1;
                        break;
                    }
                    bits |= (uint32_t)v;
                    ext[E_HTTP_REQUESTS]++;
                }
            } else if (H && H->response_on && !flag && pn >= 5 && memcmp(pl, "HTTP/", 5) == 0) {
                flag = heuristic_response(H, pl, pn);
            }
            /* every server segment of a followed flight, whatever else flagged it, so the
             * flight's budget and end are tracked */
            if (t->certs_on && cert_segment(t, &pk, pl, pn))
                flag = 1;
        }
        if (flag || bits) {
            flagged[nflagged++] = (uint32_t)i | bits << 16;
        } else {
            for (int k = 0; k < E_COUNT; k++)
                counts[C_DNS_QUERIES + k] += ext[k];
        }
    }
    Py_END_ALLOW_THREADS
    if (H)
        H->busy = 0;
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *fl = PyBytes_FromStringAndSize((const char *)flagged, nflagged * (Py_ssize_t)sizeof(uint32_t));
    if (!fl)
        goto done;
    PyObject *cl = PyList_New(C_COUNT);
    if (!cl) {
        Py_DECREF(fl);
        goto done;
    }
    for (int k = 0; k < C_COUNT; k++) {
        PyObject *v = PyLong_FromUnsignedLong(counts[k]);
        if (!v) {
            Py_DECREF(fl);
            Py_DECREF(cl);
            goto done;
        }
        PyList_SET_ITEM(cl, k, v);
    }
    result = Py_BuildValue("(NNL)", fl, cl, (long long)max_ts);
done:
    PyMem_Free(flagged);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&caplens);
    PyBuffer_Release(&linktypes);
    PyBuffer_Release(&ts);
    return result;
}

/* ---- Heuristics: the Python object --------------------------------------------------------- */

static void Heuristics_dealloc(Heuristics *self)
{
    free(self->nets);
    mt_dw_free(&self->port);
    mt_dw_free(&self->udp);
    mt_dw_free(&self->infection);
    mt_dw_free(&self->web);
    mt_dx_free(&self->dx);
    mt_lits_free(&self->ua);
    mt_lits_free(&self->req);
    mt_lits_free(&self->fname);
    mt_lits_free(&self->resp);
    mt_formula_free(&self->req_f);
    mt_formula_free(&self->fname_f);
    mt_trigger_free(&self->req_t);
    mt_trigger_free(&self->fname_t);
    mt_litlist_free(&self->dl_ext);
    mt_litlist_free(&self->dl_white);
    mt_litlist_free(&self->proxy_words);
    free(self->seen);
    free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int setting_int(PyObject *d, const char *key, long long lo, long long hi, long long *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "heuristic setting %s is missing", key);
        return -1;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "heuristic setting %s must be an int", key);
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "heuristic setting %s = %lld is outside %lld..%lld", key, x, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int setting_on(PyObject *d, const char *key, int enabled, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "heuristic setting %s is missing", key);
        return -1;
    }
    int t = PyObject_IsTrue(v);
    if (t < 0)
        return -1;
    *out = enabled && t;                       /* HeuristicSettings.on() */
    return 0;
}

/* lists[key]: a sequence of bytes (a one-item list for a single value); calls add() for each. */
static PyObject *list_of(PyObject *lists, const char *key)
{
    PyObject *v = PyDict_GetItemString(lists, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "heuristic list %s is missing", key);
        return NULL;
    }
    return PySequence_Fast(v, "heuristic lists must be sequences of bytes");
}

/* Literals into a list. `exact_only`: the literals suppress a verdict, so only those Python's
 * own test would find the same way are kept (ASCII, already lower case, no whitespace at either
 * end, which unquote(...).strip() could have removed). */
static int add_literals(PyObject *lists, const char *key, mt_litlist *l, uint8_t flags, int exact_only)
{
    PyObject *seq = list_of(lists, key);
    if (!seq)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "heuristic list %s must hold bytes", key);
            return -1;
        }
        const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(item);
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        if (exact_only) {
            int keep = n > 0 && !is_str_ws(b[0]) && !is_str_ws(b[n - 1]);
            for (Py_ssize_t k = 0; k < n && keep; k++)
                keep = b[k] < 0x80 && !(b[k] >= 'A' && b[k] <= 'Z');
            if (!keep)
                continue;
        }
        int64_t id = mt_litlist_add(l, b, (size_t)n, flags);
        if (id == -2) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "heuristic list %s: literal %zd is empty or longer than %d bytes", key, i,
                         MT_LIT_MAX_BYTES);
            return -1;
        }
        if (id < 0) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* The formula "some pattern of lists[key] may match", its literals added to l with `flag`. Sets
 * *mode (never: no patterns; always: a pattern requires no literal) and *root. */
static int add_patterns(PyObject *lists, const char *key, mt_litlist *l, uint8_t flag, mt_formula *f, uint32_t *root,
                        int *mode)
{
    PyObject *seq = list_of(lists, key);
    if (!seq)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    uint32_t *roots = malloc(sizeof(uint32_t) * (count ? count : 1));
    if (!roots) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            free(roots);
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "heuristic list %s must hold bytes", key);
            return -1;
        }
        int64_t r = mt_regex_formula((const uint8_t *)PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item),
                                     l->fold, f, l, flag);
        if (r < 0) {
            free(roots);
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        roots[i] = (uint32_t)r;
    }
    Py_DECREF(seq);
    if (count == 0) {
        free(roots);
        *mode = MODE_NEVER;
        return 0;
    }
    int64_t r = mt_formula_join(f, MT_F_OR, roots, (uint32_t)count);
    free(roots);
    if (r < 0) {
        PyErr_NoMemory();
        return -1;
    }
    *root = (uint32_t)r;
    *mode = f->node[r].op == MT_F_TRUE ? MODE_ALWAYS : MODE_FORMULA;
    return 0;
}

static int build_lits(mt_lits *x, mt_litlist *l)
{
    int r = mt_lits_build(x, l);
    if (r == -2)
        PyErr_Format(PyExc_ValueError, "more than %d heuristic literals in one set", MT_LITS_MAX);
    else if (r < 0)
        PyErr_NoMemory();
    return r < 0 ? -1 : 0;
}

static int Heuristics_init(Heuristics *self, PyObject *args, PyObject *kwds)
{
    PyObject *settings, *networks, *lists;
    if (!PyArg_ParseTuple(args, "O!OO!", &PyDict_Type, &settings, &networks, &PyDict_Type, &lists))
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Heuristics already initialised");
        return -1;
    }
    const long long I31 = 0x7FFFFFFFLL, U32 = 0xFFFFFFFELL;
    long long window_s, port_t, udp_t, inf_t, web_t, udp_max, long_len, dx_t, dx_window_s, max_keys, max_domains,
        max_subs, head_bytes;
    int en;
    PyObject *v = PyDict_GetItemString(settings, "enabled");
    if (!v) {
        PyErr_SetString(PyExc_KeyError, "heuristic setting enabled is missing");
        return -1;
    }
    if ((en = PyObject_IsTrue(v)) < 0)
        return -1;
    self->enabled = en;
    if (setting_on(settings, "port_scan", en, &self->port_on) < 0 ||
        setting_on(settings, "udp_scan", en, &self->udp_on) < 0 ||
        setting_on(settings, "infection_scan", en, &self->infection_on) < 0 ||
        setting_on(settings, "web_scan", en, &self->web_on) < 0 ||
        setting_on(settings, "nxdomain", en, &self->nxdomain_on) < 0 ||
        setting_on(settings, "dga", en, &self->dga_on) < 0 ||
        setting_on(settings, "long_domain", en, &self->long_on) < 0 ||
        setting_on(settings, "dns_exhaustion", en, &self->exhaustion_on) < 0 ||
        setting_on(settings, "user_agent", en, &self->ua_on) < 0 ||
        setting_on(settings, "http_request", en, &self->request_on) < 0 ||
        setting_on(settings, "direct_download", en, &self->download_on) < 0 ||
        setting_on(settings, "iot_download", en, &self->iot_on) < 0 ||
        setting_on(settings, "proxy_probe", en, &self->proxy_on) < 0 ||
        setting_on(settings, "missing_host", en, &self->missing_host_on) < 0 ||
        setting_on(settings, "http_response", en, &self->response_on) < 0 ||
        setting_int(settings, "scan_window_s", 0, I31, &window_s) < 0 ||
        setting_int(settings, "port_scan_threshold", 0, U32 - 1, &port_t) < 0 ||
        setting_int(settings, "udp_scan_threshold", 0, U32 - 1, &udp_t) < 0 ||
        setting_int(settings, "infection_scan_threshold", 0, U32 - 1, &inf_t) < 0 ||
        setting_int(settings, "web_scan_threshold", 0, U32 - 1, &web_t) < 0 ||
        setting_int(settings, "udp_probe_max_bytes", 0, I31, &udp_max) < 0 ||
        setting_int(settings, "long_domain_length", 0, I31, &long_len) < 0 ||
        setting_int(settings, "dns_exhaustion_threshold", 0, U32, &dx_t) < 0 ||
        setting_int(settings, "dns_exhaustion_window_s", 0, I31, &dx_window_s) < 0 ||
        setting_int(settings, "max_scan_keys", 1, U32, &max_keys) < 0 ||
        setting_int(settings, "max_dns_domains", 1, U32, &max_domains) < 0 ||
        setting_int(settings, "max_dns_subdomains", 1, 1LL << 48, &max_subs) < 0)
        return -1;
    self->udp_probe_max_bytes = (uint32_t)udp_max;
    self->long_domain_length = (uint32_t)long_len;

    PyObject *ports = PyDict_GetItemString(settings, "infection_ports");
    PyObject *seq = ports ? PySequence_Fast(ports, "infection_ports must be a sequence of ints") : NULL;
    if (!seq) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "heuristic setting infection_ports is missing");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long port = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (port == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (port >= 0 && port <= 65535)       /* a port no packet has can never match */
            self->infection_port[port >> 3] |= (uint8_t)(1u << (port & 7));
    }
    Py_DECREF(seq);

    seq = PySequence_Fast(networks, "networks must be a sequence of (version, address bytes, prefix length)");
    if (!seq)
        return -1;
    Py_ssize_t nn = PySequence_Fast_GET_SIZE(seq);
    self->nets = calloc(nn ? nn : 1, sizeof(local_net));
    if (!self->nets) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nn; i++) {
        int version, prefix;
        const char *addr;
        Py_ssize_t alen;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iy#i", &version, &addr, &alen, &prefix)) {
            Py_DECREF(seq);
            return -1;
        }
        if (!((version == 4 && alen == 4 && prefix >= 0 && prefix <= 32) ||
              (version == 6 && alen == 16 && prefix >= 0 && prefix <= 128))) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a local network is (4, 4 bytes, 0..32) or (6, 16 bytes, 0..128)");
            return -1;
        }
        self->nets[i].version = version;
        self->nets[i].prefix = prefix;
        memcpy(self->nets[i].addr, addr, alen);
    }
    self->n_nets = (uint32_t)nn;
    Py_DECREF(seq);

    long long trace[2];
    seq = list_of(lists, "traceroute_ports");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 2) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "traceroute_ports is (start, stop)");
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        trace[k] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, k));
        if (trace[k] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->trace_lo = (uint32_t)(trace[0] < 0 ? 0 : trace[0] > 65536 ? 65536 : trace[0]);
    self->trace_hi = (uint32_t)(trace[1] < 0 ? 0 : trace[1] > 65536 ? 65536 : trace[1]);
    if (setting_int(lists, "response_head_bytes", 0, I31, &head_bytes) < 0)
        return -1;
    self->response_head_bytes = (uint32_t)head_bytes;

    mt_hkey_random(&self->hk);
    int64_t window_us = window_s * 1000000;
    mt_dw_init(&self->port, (uint32_t)port_t, window_us, (uint32_t)max_keys, &self->hk, 1);  /* ports */
    mt_dw_init(&self->udp, (uint32_t)udp_t, window_us, (uint32_t)max_keys, &self->hk, 1);    /* ports */
    mt_dw_init(&self->infection, (uint32_t)inf_t, window_us, (uint32_t)max_keys, &self->hk, 0);
    mt_dw_init(&self->web, (uint32_t)web_t, window_us, (uint32_t)max_keys, &self->hk, 0);
    mt_dx_init(&self->dx, (uint32_t)dx_t, dx_window_s * 1000000, (uint32_t)max_domains, (uint64_t)max_subs, &self->hk);

    mt_litlist l;
    mt_litlist_init(&l, MT_FOLD_LOWER);
    if (add_literals(lists, "suspicious_user_agents", &l, UA_SUSPICIOUS, 0) < 0 ||
        add_literals(lists, "whitelist_user_agents", &l, UA_WHITELISTED, 1) < 0 || build_lits(&self->ua, &l) < 0)
        goto fail;
    mt_litlist_init(&l, MT_FOLD_LOWER_WS);
    int mode;
    if (add_literals(lists, "request_needles", &l, REQ_NEEDLE, 0) < 0 ||
        add_patterns(lists, "request_patterns", &l, REQ_PATTERN, &self->req_f, &self->req_root, &mode) < 0)
        goto fail;
    self->req_always = mode;
    if (build_lits(&self->req, &l) < 0)
        goto fail;
    mt_litlist_init(&l, MT_FOLD_LOWER_WS);
    if (add_patterns(lists, "filename_patterns", &l, 1, &self->fname_f, &self->fname_root, &mode) < 0)
        goto fail;
    self->fname_always = mode;
    if (build_lits(&self->fname, &l) < 0)
        goto fail;
    mt_litlist_init(&l, MT_FOLD_LOWER);
    if (add_literals(lists, "response_needles", &l, 1, 0) < 0 || build_lits(&self->resp, &l) < 0)
        goto fail;
    mt_litlist_init(&self->dl_ext, MT_FOLD_NONE);
    mt_litlist_init(&self->dl_white, MT_FOLD_NONE);
    mt_litlist_init(&self->proxy_words, MT_FOLD_NONE);
    if (add_literals(lists, "download_extensions", &self->dl_ext, 1, 0) < 0 ||
        add_literals(lists, "whitelist_download_paths", &self->dl_white, 1, 0) < 0 ||
        add_literals(lists, "proxy_probe_words", &self->proxy_words, 1, 0) < 0)
        return -1;
    if ((self->req_always == MODE_FORMULA &&
         mt_trigger_build(&self->req_t, &self->req_f, &self->req.lits, self->req_root) < 0) ||
        (self->fname_always == MODE_FORMULA &&
         mt_trigger_build(&self->fname_t, &self->fname_f, &self->fname.lits, self->fname_root) < 0)) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t most = self->req.lits.n > self->fname.lits.n ? self->req.lits.n : self->fname.lits.n;
    self->seen_words = most / 64 + 1;
    self->seen = calloc(self->seen_words, sizeof(uint64_t));
    if (!self->seen) {
        PyErr_NoMemory();
        return -1;
    }
    self->ready = 1;
    return 0;
fail:
    mt_litlist_free(&l);
    return -1;
}

static const char *MODE_NAMES[] = {"never", "formula", "always"};

static PyObject *Heuristics_stats(Heuristics *self, PyObject *unused)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}",
                         "port scan keys evicted", (unsigned long long)self->port.evicted_keys,
                         "udp scan keys evicted", (unsigned long long)self->udp.evicted_keys,
                         "infection scan keys evicted", (unsigned long long)self->infection.evicted_keys,
                         "web scan keys evicted", (unsigned long long)self->web.evicted_keys,
                         "dns exhaustion domains evicted", (unsigned long long)self->dx.evicted_domains,
                         "dns exhaustion subdomains not stored", (unsigned long long)self->dx.unstored_subdomains);
}

static PyObject *Heuristics_held(Heuristics *self, PyObject *unused)
{
    return Py_BuildValue("{s:I,s:I,s:I,s:I,s:I,s:K}", "port", self->port.count, "udp", self->udp.count,
                         "infection", self->infection.count, "web", self->web.count, "dns domains", self->dx.count,
                         "dns subdomains", (unsigned long long)self->dx.stored);
}

static PyObject *Heuristics_prefilters(Heuristics *self, PyObject *unused)
{
    PyObject *lits = PyList_New(0);
    if (!lits)
        return NULL;
    for (uint32_t i = 0; i < self->req.lits.n; i++) {
        if (!(self->req.lits.flags[i] & REQ_PATTERN))
            continue;
        PyObject *b = PyBytes_FromStringAndSize((const char *)self->req.lits.blob + self->req.lits.off[i],
                                                self->req.lits.len[i]);
        if (!b || PyList_Append(lits, b) < 0) {
            Py_XDECREF(b);
            Py_DECREF(lits);
            return NULL;
        }
        Py_DECREF(b);
    }
    /* each disjunct of the request formula that a literal triggers: the literals that trigger it */
    PyObject *triggers = PyDict_New();
    if (!triggers) {
        Py_DECREF(lits);
        return NULL;
    }
    for (uint32_t id = 0; id < self->req_t.n_lits; id++) {
        for (uint32_t k = self->req_t.first[id]; k < self->req_t.first[id + 1]; k++) {
            PyObject *key = PyLong_FromUnsignedLong(self->req_t.disj[k]);
            PyObject *b = PyBytes_FromStringAndSize((const char *)self->req.lits.blob + self->req.lits.off[id],
                                                    self->req.lits.len[id]);
            PyObject *list = key ? PyDict_GetItemWithError(triggers, key) : NULL;
            int bad = !key || !b || (!list && PyErr_Occurred());
            if (!bad && !list) {
                list = PyList_New(0);
                bad = !list || PyDict_SetItem(triggers, key, list) < 0;
                Py_XDECREF(list);
            }
            bad = bad || PyList_Append(list, b) < 0;
            Py_XDECREF(key);
            Py_XDECREF(b);
            if (bad) {
                Py_DECREF(lits);
                Py_DECREF(triggers);
                return NULL;
            }
        }
    }
    return Py_BuildValue("{s:s,s:s,s:N,s:N,s:I}", "request", MODE_NAMES[self->req_always], "filename",
                         MODE_NAMES[self->fname_always], "request literals", lits, "request triggers", triggers,
                         "untriggered", self->req_t.n_untriggered);
}

/* check(kind, data): one prefilter on its own, for tests: "user_agent" (a User-Agent value),
 * "request" (a request path as sent), "body" (a request body as sent), "filename" (a lower-case file name), "response"
 * (a TCP payload starting with HTTP/). */
static PyObject *Heuristics_check(Heuristics *self, PyObject *args)
{
    const char *kind;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "sy*", &kind, &b))
        return NULL;
    int r = 0;
    if (!self->ready || self->busy) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_RuntimeError, "Heuristics not initialised or in use");
        return NULL;
    }
    const uint8_t *s = b.buf;
    uint32_t n = (uint32_t)b.len;
    if (strcmp(kind, "user_agent") == 0) {
        r = heuristic_user_agent(self, s, n);
    } else if (strcmp(kind, "request") == 0) {
        const uint8_t *q = memchr(s, '?', n);
        r = heuristic_request_text(self, s, n, q ? (size_t)(q - s) + 1 : n);
    } else if (strcmp(kind, "body") == 0) {
        r = heuristic_request_text(self, s, n, 0);
    } else if (strcmp(kind, "response") == 0) {
        r = heuristic_response(self, s, n);
    } else if (strcmp(kind, "filename") == 0) {
        if (self->fname_always != MODE_FORMULA) {
            r = self->fname_always == MODE_ALWAYS;
        } else {
            memset(self->seen, 0, self->seen_words * sizeof(uint64_t));
            uint8_t flags = 0;
            mt_lits_search(&self->fname, s, n, 0, &flags, self->seen);
            r = mt_trigger_eval(&self->fname_t, &self->fname_f, self->seen, self->seen_words);
        }
    } else {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "unknown prefilter %s", kind);
        return NULL;
    }
    PyBuffer_Release(&b);
    if (r < 0)
        return PyErr_NoMemory();
    return PyBool_FromLong(r);
}

static PyMethodDef Heuristics_methods[] = {
    {"stats", (PyCFunction)Heuristics_stats, METH_NOARGS,
     "stats() -> the saturation counters this state owns (ScanHeuristics.saturation() and the exhaustion "
     "part of DnsHeuristics.saturation(), same keys)"},
    {"held", (PyCFunction)Heuristics_held, METH_NOARGS, "held() -> keys / domains / subdomains held now"},
    {"prefilters", (PyCFunction)Heuristics_prefilters, METH_NOARGS,
     "prefilters() -> how the request and file-name patterns are prefiltered, and the request literals"},
    {"check", (PyCFunction)Heuristics_check, METH_VARARGS, "check(kind, data) -> bool: one prefilter (tests)"},
    {NULL}};

PyTypeObject HeuristicsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workers._fastpath.Heuristics",
    .tp_basicsize = sizeof(Heuristics),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Heuristics(settings, local_networks, lists): the heuristics' state and prefilters for scan()\n\n"
              "settings: HeuristicSettings' fields by name; local_networks: (version, address bytes, prefix "
              "length); lists: the literal and pattern lists of workers/heuristics (bytes), traceroute_ports "
              "(start, stop) and response_head_bytes. Lives as long as its worker: trail reloads keep it.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Heuristics_init,
    .tp_dealloc = (destructor)Heuristics_dealloc,
    .tp_methods = Heuristics_methods,
};

/* decode(frame, linktype) -> None or skip reason index, or the packet fields (tests) */
static PyObject *decode(PyObject *self, PyObject *args)
{
    Py_buffer b;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*i", &b, &linktype))
        return NULL;
    mt_packet pk;
    int rc = mt_decode(b.buf, (uint32_t)b.len, linktype, &pk);
    PyObject *out;
    if (rc != MT_OK) {
        out = PyLong_FromLong(rc);
    } else {
        int al = pk.version == 4 ? 4 : 16;
        out = Py_BuildValue("(iy#y#iiiiiIII)", pk.version, pk.src, (Py_ssize_t)al, pk.dst, (Py_ssize_t)al, pk.proto,
                            pk.sport, pk.dport, pk.tcp_flags, pk.icmp_type, pk.payload_off, pk.payload_len,
                            pk.tcp_seq);
    }
    PyBuffer_Release(&b);
    return out;
}

/* offsets(caplens) -> bytes: the u64 offsets of frames packed back to back */
static PyObject *offsets_of(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = b.len / 4;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 8);
    if (out) {
        uint64_t *o = (uint64_t *)PyBytes_AS_STRING(out), at = 0;
        const uint32_t *c = b.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            o[i] = at;
            at += c[i];
        }
    }
    PyBuffer_Release(&b);
    return out;
}

PyTypeObject TablesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workers._fastpath.Tables",
    .tp_basicsize = sizeof(Tables),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tables(sections, regex_literals, regex_always, ua_patterns): an artifact's lookups for scan()",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tables_init,
    .tp_dealloc = (destructor)Tables_dealloc,
};

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(tables, buf, offsets, caplens, linktypes, ts_ns[, heuristics]) -> (flagged u32 bytes, counts, max_ts_us)"
     "\n\nflagged: frame index (low 16 bits) | verdict bits << 16; at most 65535 frames per batch."},
    {"decode", decode, METH_VARARGS, "decode(frame, linktype) -> skip reason index or packet fields"},
    {"offsets", offsets_of, METH_O, "offsets(caplens u32 bytes) -> u64 offsets bytes"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath",
                                    "The worker's per-packet path in C (see workers/csrc/fastpath.c)", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&TablesType) < 0 || PyType_Ready(&HeuristicsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&TablesType);
    if (PyModule_AddObject(m, "Tables", (PyObject *)&TablesType) < 0) {
        Py_DECREF(&TablesType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HeuristicsType);
    if (PyModule_AddObject(m, "Heuristics", (PyObject *)&HeuristicsType) < 0) {
        Py_DECREF(&HeuristicsType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "COUNTS", C_COUNT) < 0 || PyModule_AddIntConstant(m, "PORT_SCAN", V_PORT_SCAN) < 0 ||
        PyModule_AddIntConstant(m, "UDP_SCAN", V_UDP_SCAN) < 0 ||
        PyModule_AddIntConstant(m, "INFECTION_SCAN", V_INFECTION_SCAN) < 0 ||
        PyModule_AddIntConstant(m, "WEB_SCAN", V_WEB_SCAN) < 0 ||
        PyModule_AddIntConstant(m, "DNS_EXHAUSTION", V_DNS_EXHAUSTION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_BATCH_FRAMES", MAX_BATCH_FRAMES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
