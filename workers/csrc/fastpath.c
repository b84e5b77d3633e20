/*
 * workers._fastpath: the worker's per-packet path in C, over a whole batch.
 *
 * Owns the batch scan: decode every frame (decode.h), count it as decoded or skipped by reason,
 * and decide whether it can produce an event: an IP or IP:port trail on either end, a domain
 * trail on a DNS question, an HTTP host or a TLS server name, a URL or user-agent trail on an
 * HTTP request, a trail address in a DNS answer, or a QUIC long-header packet (whose Initial
 * needs the Python reassembler). Only those frames are returned; the Python reference
 * (workers/pipeline.py) judges them, so events are the reference's by construction. Whatever C
 * cannot decide exactly as the reference would (non-ASCII names, a ClientHello split over
 * records, DNS over TCP, an IPv6 request without Host...) is returned too.
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
       S_NSECTIONS };
static const char *SECTION_NAMES[S_NSECTIONS] = {"ip4", "cidr4", "ipport4", "ip6", "ipport6", "cidr6_list",
                                                  "domains", "urls", "trails", "strings", "ip4_p24"};

typedef struct {
    PyObject_HEAD
    Py_buffer sec[S_NSECTIONS];
    int have[S_NSECTIONS];
    mt_roaring ip4, cidr4;
    mt_roaring64 ipport4;
    mt_table domains, urls;
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
    Py_TYPE(self)->tp_free((PyObject *)self);
}

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

static int suffix_hit(const mt_table *t, const uint8_t *name, size_t n)
{
    size_t start = 0;
    while (start < n) {
        if (mt_table_find(t, name + start, n - start) >= 0)
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

/* workers.pipeline._NUMERIC_NAME / _VALID_NAME */
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
        if (!(digit || (c >= 'a' && c <= 'z') || c == '_' || c == '-' || c == '.'))
            return 0;
        if (c == '.')
            last_dot = (int)i;
    }
    if (numeric)
        return 0;
    return last_dot >= 0 && (size_t)last_dot + 1 < n;
}

#define IPADRESS ".ip-adress.com"

/* Could workers.matchers DomainMatcher.match() find a trail for this (valid, lower-case) name? */
static int domain_candidate(const Tables *t, const uint8_t *s, size_t n)
{
    if (!name_checkable(s, n))
        return 0;
    if (t->have[S_DOMAINS]) {
        if (suffix_hit(&t->domains, s, n))
            return 1;
        size_t sl = sizeof(IPADRESS) - 1;
        if (n > sl && memcmp(s + n - sl, IPADRESS, sl) == 0 && mt_table_find(&t->domains, s, n - sl) >= 0)
            return 1;
        for (size_t i = 1; i + 7 <= n; i++) {  /* ".onion." gateways */
            if (memcmp(s + i, ".onion.", 7) == 0) {
                if (mt_table_find(&t->domains, s, i + 6) >= 0)
                    return 1;
                break;
            }
        }
    }
    if (t->regex_always)
        return 1;
    return literal_hit(t, s, n);
}

/* ---- DNS --------------------------------------------------------------------------------- */

static const char *IGNORED_SUFFIXES[] = {"arpa", "local", "guest", "intranet", "int", "corp", "home", "lan",
                                         "intra", "intran", "workgroup", "localdomain", "url", "alienvault",
                                         "example", "test", "invalid", "localhost", NULL};

static int ignored_query(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i + 10 <= n; i++)
        if (memcmp(s + i, ".intranet.", 10) == 0)
            return 1;
    size_t last = n;
    while (last > 0 && s[last - 1] != '.')
        last--;
    for (const char **x = IGNORED_SUFFIXES; *x; x++)
        if (strlen(*x) == n - last && memcmp(s + last, *x, n - last) == 0)
            return 1;
    return 0;
}

/* One UDP DNS message. Returns 1 to hand the frame to Python; else 0 and adds to counts[]. */
static int scan_dns(const Tables *t, const uint8_t *m, uint32_t n, uint8_t *name, uint32_t *counts)
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
        return 1;                              /* Python's lower() decides such names */
    uint32_t qclass = mt_be16(m + after + 2);
    if (!response) {
        if (opcode != 0)
            return 0;
        counts[C_DNS_QUERIES]++;
        if (ignored_query(name, (size_t)len))
            return 0;
        if (domain_candidate(t, name, (size_t)len)) {
            counts[C_DNS_QUERIES]--;
            return 1;
        }
        return 0;
    }
    counts[C_DNS_RESPONSES]++;
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
                            (rtype == 28 && rdlen == 16 && ip_hit(t, 6, m + pos, 0)))) {
            counts[C_DNS_RESPONSES]--;
            return 1;
        }
        pos += rdlen;
    }
    return 0;
}

/* ---- TLS --------------------------------------------------------------------------------- */

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

static const uint8_t *find_bytes(const uint8_t *h, size_t hn, const char *needle, size_t nn)
{
    if (nn > hn)
        return NULL;
    return memmem(h, hn, needle, nn);
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

static void strip(const uint8_t **s, uint32_t *n)
{
    while (*n && is_ws((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_ws((*s)[*n - 1]))
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

static int lower_equals(const uint8_t *s, uint32_t n, const char *word)
{
    size_t wl = strlen(word);
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

static int has_high_bytes(const uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (s[i] >= 0x80)
            return 1;
    return 0;
}

static void lower_ascii(uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] += 32;
}

/* workers.pipeline.normalize_host on a lower-case ASCII value: into out, returns the length. */
static uint32_t normalize_host(const uint8_t *s, uint32_t n, uint8_t *out)
{
    strip(&s, &n);
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

static int table_has(const mt_table *t, const uint8_t *s, size_t n) { return mt_table_find(t, s, n) >= 0; }

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
static int url_candidate(const mt_table *t, const uint8_t *host, uint32_t hn, const uint8_t *path, uint32_t pn,
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
        uint32_t f = first.n;
        while (f && first.s[f - 1] != '/')
            f--;
        const uint8_t *tail = first.s + f - 1;  /* first[first.rfind('/'):] ... */
        uint32_t tn = first.n - (f - 1);
        const uint8_t *qq = memchr(tail, '?', tn);
        if (qq)
            tn = (uint32_t)(qq - tail);          /* ... .split('?')[0] */
        checks[nc++] = (span){tail, tn};
    }
    for (int i = 0; i < nc; i++) {
        if (!checks[i].n)
            continue;
        if (table_has(t, checks[i].s, checks[i].n))
            return 1;
        memcpy(key, host, hn);
        memcpy(key + hn, checks[i].s, checks[i].n);
        if (table_has(t, key, hn + checks[i].n))
            return 1;
    }
    memcpy(key, host, hn);
    key[hn] = '/';
    return table_has(t, key, hn + 1);
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

static int ua_hit(const Tables *t, const uint8_t *ua, uint32_t n, uint8_t *buf)
{
    memcpy(buf, ua, n);
    lower_ascii(buf, n);
    for (uint32_t i = 0; i < t->n_uas; i++)
        if (t->ua_len[i] && t->ua_len[i] <= n && memmem(buf, n, t->ua_blob + t->ua_off[i], t->ua_len[i]))
            return 1;
    return 0;
}

/* An HTTP request (already parsed). 1 to hand the frame to Python. */
static int scan_http(Tables *t, const mt_packet *pk, const http_req *r)
{
    uint8_t *buf = t->scratch;
    uint8_t *host = buf + SCR_HOST, *path = buf + SCR_PATH, *name = buf + SCR_NAME, *work = buf + SCR_WORK;
    uint32_t hn, pn;
    if (has_high_bytes(r->target, r->target_len) || (r->have_host && has_high_bytes(r->host, r->host_len)) ||
        (r->have_ua && has_high_bytes(r->ua, r->ua_len)))
        return 1;
    memcpy(path, r->target, r->target_len);
    pn = r->target_len;
    lower_ascii(path, pn);
    if (r->have_host && r->host_len) {
        memcpy(host, r->host, r->host_len);
        hn = r->host_len;
        lower_ascii(host, hn);
        if (hn >= 3 && memcmp(host + hn - 3, ":80", 3) == 0)
            hn -= 3;
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
    if (scheme) {
        const uint8_t *rest = scheme + 3;
        uint32_t rn = pn - (uint32_t)(rest - path);
        const uint8_t *slash = memchr(rest, '/', rn);
        uint32_t h2 = slash ? (uint32_t)(slash - rest) : rn;
        uint8_t *newpath = work;
        newpath[0] = '/';
        uint32_t np = 1;
        if (slash) {
            memcpy(newpath + 1, slash + 1, rn - h2 - 1);
            np += rn - h2 - 1;
        }
        memmove(host, rest, h2);
        hn = h2;
        if (hn >= 3 && memcmp(host + hn - 3, ":80", 3) == 0)
            hn -= 3;
        memcpy(path, newpath, np);
        pn = np;
        uint32_t nn = normalize_host(host, hn, name);
        if (domain_candidate(t, name, nn))
            return 1;
    } else if (connect) {
        const uint8_t *slash = memchr(path, '/', pn);
        uint32_t h2 = slash ? (uint32_t)(slash - path) : pn;
        uint8_t *newpath = work;
        newpath[0] = '/';
        uint32_t np = 1;
        if (slash) {
            memcpy(newpath + 1, slash + 1, pn - h2 - 1);
            np += pn - h2 - 1;
        }
        memmove(host, path, h2);
        hn = h2;
        if (hn >= 3 && memcmp(host + hn - 3, ":80", 3) == 0)
            hn -= 3;
        memcpy(path, newpath, np);
        pn = np;
        uint32_t nn = normalize_host(host, hn, name);
        if (domain_candidate(t, name, nn))
            return 1;
    }
    if (r->have_ua && r->ua_len && t->n_uas && ua_hit(t, r->ua, r->ua_len, buf + SCR_UA))
        return 1;
    if (!t->have[S_URLS] || !t->urls.count)
        return 0;
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
    return url_candidate(&t->urls, host, hn, path, pn, post, (uint32_t)postn, have_post, buf + SCR_URL);
}

/* ---- the batch scan ------------------------------------------------------------------------- */

static PyObject *scan(PyObject *self, PyObject *args)
{
    Tables *t;
    Py_buffer buf, offsets, caplens, linktypes, ts;
    extern PyTypeObject TablesType;
    if (!PyArg_ParseTuple(args, "O!y*y*y*y*y*", &TablesType, &t, &buf, &offsets, &caplens, &linktypes, &ts))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = caplens.len / 4;
    if (offsets.len / 8 != n || linktypes.len / 2 != n || ts.len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "batch arrays differ in length");
        goto done;
    }
    const uint64_t *off = offsets.buf;
    const uint32_t *cap = caplens.buf;
    const uint16_t *lt = linktypes.buf;
    const int64_t *tsn = ts.buf;
    const uint8_t *base = buf.buf;
    uint32_t counts[C_COUNT] = {0};
    uint32_t *flagged = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!flagged) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t nflagged = 0;
    int64_t max_ts = 0;
    uint8_t name[MT_MAX_NAME + 1];
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
        int flag = ip_hit(t, pk.version, pk.dst, pk.dport) || ip_hit(t, pk.version, pk.src, pk.sport);
        const uint8_t *pl = p + pk.payload_off;
        uint32_t pn = pk.payload_len;
        if (!flag && pk.proto == 17) {
            if (pk.sport == 53 || pk.dport == 53)
                flag = scan_dns(t, pl, pn, name, counts);
            else if (pn && (pl[0] & 0x80) && pn >= 5) {
                uint32_t version = mt_be32(pl + 1);
                flag = version == 1 || version == 0x6B3343CF;   /* QUIC v1/v2: the reassembler decides */
            }
        } else if (!flag && pk.proto == 6 && pn) {
            if (pk.sport == 53 || pk.dport == 53)
                flag = 1;                                  /* DNS over TCP: rare, Python reads it */
            else if (pn > 5 && pl[0] == 22 && pl[1] == 3 && pl[2] <= 4 && pl[5] == 1) {
                int l = tls_sni(pl, pn, name);
                if (l < 0)
                    flag = 1;
                else if (l > 0) {
                    if (domain_candidate(t, name, (size_t)l))
                        flag = 1;
                    else
                        counts[C_TLS_NAMES]++;
                }
            } else if (looks_like_http(pl, pn)) {
                http_req r;
                if (parse_http(pl, pn, &r)) {
                    if (scan_http(t, &pk, &r))
                        flag = 1;
                    else
                        counts[C_HTTP_REQUESTS]++;
                }
            }
        }
        if (flag)
            flagged[nflagged++] = (uint32_t)i;
    }
    Py_END_ALLOW_THREADS
    PyObject *fl = PyBytes_FromStringAndSize((const char *)flagged, nflagged * (Py_ssize_t)sizeof(uint32_t));
    PyMem_Free(flagged);
    if (!fl)
        goto done;
    PyObject *cl = PyList_New(C_COUNT);
    if (!cl) {
        Py_DECREF(fl);
        goto done;
    }
    for (int k = 0; k < C_COUNT; k++)
        PyList_SET_ITEM(cl, k, PyLong_FromUnsignedLong(counts[k]));
    result = Py_BuildValue("(NNL)", fl, cl, (long long)max_ts);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&caplens);
    PyBuffer_Release(&linktypes);
    PyBuffer_Release(&ts);
    return result;
}

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
        out = Py_BuildValue("(iy#y#iiiiiII)", pk.version, pk.src, (Py_ssize_t)al, pk.dst, (Py_ssize_t)al, pk.proto,
                            pk.sport, pk.dport, pk.tcp_flags, pk.icmp_type, pk.payload_off, pk.payload_len);
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
     "scan(tables, buf, offsets, caplens, linktypes, ts_ns) -> (flagged u32 bytes, counts, max_ts_us)"},
    {"decode", decode, METH_VARARGS, "decode(frame, linktype) -> skip reason index or packet fields"},
    {"offsets", offsets_of, METH_O, "offsets(caplens u32 bytes) -> u64 offsets bytes"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath",
                                    "The worker's per-packet path in C (see workers/csrc/fastpath.c)", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&TablesType) < 0)
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
    if (PyModule_AddIntConstant(m, "COUNTS", C_COUNT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
