/*
 * engine._capture: the capture process's per-frame work in C.
 *
 * Owns, for every frame: walking classic pcap records in a read buffer (or an already-read
 * FrameBatch), the dispatch key (byte for byte engine/dispatch.py dispatch_key, decoding with
 * workers/csrc/decode.h) and its keyed hash, staging one batch per worker, and publishing full
 * batches into the workers' rings exactly as engine/ring.py Ring.put + encode_batch would (the
 * same message header, PAD message, 8-byte alignment; the tail loaded with acquire, the head
 * published with a release store after the message bytes are written).
 *
 * The Python reference of all this is engine/transport/stager.py PyStager (Dispatcher.worker_for,
 * FrameBatchBuilders, Ring.put), fed PcapFileReader's batches. tests/test_capture_c.py holds the
 * two to the same frames, keys and ring messages.
 *
 * Full rings: in replay a call returns RING_FULL at the first frame it could not stage (that
 * frame and the rest of the input are not consumed; staged frames stay staged) and the caller
 * sleeps and calls again; in live capture a batch that does not fit is dropped and counted in the
 * ring's drop counters (the fields Ring.count_drop updates). A frame too big for any message
 * (more than half the ring) is dropped and counted the same way in both modes, by the Python
 * reference too (the supervisor sizes rings so that it cannot happen: ring.py min_ring_bytes).
 *
 * The hash is SipHash-2-4 (Aumasson & Bernstein, "SipHash: a fast short-input PRF", with the
 * reference test vectors checked in the tests) keyed by the run's 16-byte seed, so traffic cannot
 * be crafted to pile onto one worker; it differs from the reference's BLAKE2b on purpose (one
 * SipHash of a 17-byte key costs ~20 ns). With one ring there is no key at all.
 *
 * A frame whose payload cannot matter to the worker (headers_suffice: a client's TCP data
 * segment opening with nothing the worker parses, such as TLS application data) is published as
 * its headers alone: its capture length cut where its payload starts, its wire length kept. The
 * rule is engine/transport/dispatch.py headers_cut's, held to it by tests/test_headers_only.py.
 *
 * Must not judge packets, nor know where buffers come from (files, libpcap).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <time.h>

#include "decode.h"

/* ring layout: engine/ring.py */
#define RING_HEADER_BYTES 320
#define OFF_HEAD 64
#define OFF_TAIL 128
#define OFF_DROP_FRAMES 200
#define OFF_DROP_BATCHES 208
#define KIND_BATCH 1
#define KIND_PAD 2
#define FRAME_META_BYTES 18   /* i64 ts, u32 caplen, u32 wirelen, u16 linktype */

/* statuses returned to Python */
enum { ST_OK = 0, ST_RING_FULL = 1, ST_BAD_RECORD = 2, ST_NOMEM = -1 };

#define KEY_RAW_BYTES 48     /* frames that do not decode: their first bytes */
#define KEY_MAX_BYTES (2 + MT_MAX_NAME + 1)
#define STAGE_INITIAL_BYTES (256 * 1024)

static inline uint64_t align8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static inline uint32_t rd32(const uint8_t *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- SipHash-2-4 ----------------------------------------------------------------------------- */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                  \
    do {                                                                                          \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);                              \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                                                  \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                                                  \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);                              \
    } while (0)

static uint64_t siphash24(uint64_t k0, uint64_t k1, const uint8_t *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = get_le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[whole + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the dispatch key (engine/dispatch.py) ------------------------------------------------- */

/* str.lower() of Latin-1 text: À..Þ except × map 0x20 up; ASCII letters are done by mt_dns_name.
 * No other Latin-1 character changes, and none maps outside Latin-1 (checked in the tests). */
static inline void latin1_lower(uint8_t *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] >= 0xC0 && s[i] <= 0xDE && s[i] != 0xD7)
            s[i] += 0x20;
}

/* workers.dns.parse_dns as far as the dispatch key needs it: -2 when the message does not parse
 * (parse_dns returns None), else the length of the lower-cased first question name written to out
 * (0 when there is no question, or the root name: both make the key fall back to an address). */
static int dns_qname(const uint8_t *m, uint32_t n, uint8_t *out)
{
    if (n < 12)
        return -2;
    if (mt_be16(m + 4) == 0) /* qdcount: no question, a message all the same */
        return 0;
    uint32_t after = 0;
    int nonascii = 0;
    int len = mt_dns_name(m, n, 12, out, &after, &nonascii);
    if (len < 0 || (uint64_t)after + 4 > n)
        return -2;
    /* Nothing after the question can make parse_dns return None: extra questions and answers
     * that fail to parse only end their loops. */
    if (nonascii)
        latin1_lower(out, len);
    return len;
}

/* registered_domain(name): the last two labels, three when there are more than three labels and
 * the second-level one is at most 3 characters. Labels are split at every '.', including dots
 * inside a label's bytes, exactly as str.split(".") on the joined name does. */
static inline void registered_domain(const uint8_t *name, int len, int *start)
{
    int dots[3], found = 0;
    for (int i = len - 1; i >= 0 && found < 3; i--)
        if (name[i] == '.')
            dots[found++] = i;
    if (found < 2) { /* one or two labels: the whole name */
        *start = 0;
        return;
    }
    /* labels[-2] lies between dots[1] and dots[0]; "more than three labels" is >= 3 dots */
    if (found == 3 && dots[0] - dots[1] - 1 <= 3) {
        *start = dots[2] + 1;
        return;
    }
    *start = dots[1] + 1;
}

/* Writes the dispatch key of a frame into key (KEY_MAX_BYTES); returns its length. `pk` is the
 * frame decoded, NULL when it does not decode. */
static size_t dispatch_key(const mt_packet *pkp, const uint8_t *f, uint32_t n, uint8_t *key)
{
    if (!pkp) {
        size_t k = n < KEY_RAW_BYTES ? n : KEY_RAW_BYTES;
        memcpy(key, f, k);
        return k;
    }
    const mt_packet pk = *pkp;
    if ((pk.proto == 17 || pk.proto == 6) && (pk.sport == 53 || pk.dport == 53) && pk.payload_len) {
        const uint8_t *pl = f + pk.payload_off;
        uint32_t plen = pk.payload_len;
        int len = -2;
        if (pk.proto == 17) {
            len = dns_qname(pl, plen, key + 2);
        } else {
            /* parse_dns_tcp()[0]: the first length-prefixed message that parses */
            uint32_t pos = 0;
            while (pos + 2 <= plen) {
                uint32_t mlen = mt_be16(pl + pos);
                if (mlen < 12 || pos + 2 + mlen > plen)
                    break;
                len = dns_qname(pl + pos + 2, mlen, key + 2);
                if (len != -2)
                    break;
                pos += 2 + mlen;
            }
        }
        if (len > 0) {
            int start;
            registered_domain(key + 2, len, &start);
            if (start)
                memmove(key + 2, key + 2 + start, (size_t)(len - start));
            key[0] = 'd';
            key[1] = ':';
            return (size_t)(2 + len - start);
        }
    }
    /* the client's address; a UDP datagram's sender's */
    const uint8_t *owner = mt_dispatch_is_src(&pk) ? pk.src : pk.dst;
    key[0] = (uint8_t)pk.version;
    if (pk.version == 4) {
        /* the address as a 16-byte big-endian integer: 12 zero bytes, then IPv4 */
        memset(key + 1, 0, 12);
        memcpy(key + 13, owner, 4);
    } else {
        memcpy(key + 1, owner, 16);
    }
    return 17;
}

/* ---- frames published as headers only ---------------------------------------------------- */

/* engine/transport/dispatch.py headers_suffice: whether the worker judges this decoded TCP
 * segment exactly as it would with its payload cut off, so that only its headers need cross the
 * ring. It must be a data segment inside a connection (ACK; no SYN or RST) sent by its client
 * by the port rule (source port >= destination port: the worker's certificate path follows only
 * the server's segments, see reverses_flight), off port 53, whose payload opens with nothing
 * the worker parses: not a TLS handshake record (ClientHello, ServerHello), not "HTTP/" (the
 * response heuristics), not a possible request line (1..32 visible characters then a space,
 * which every HTTP method and request-target start passes). Everything else stays whole. */
static int headers_suffice(const mt_packet *pk, const uint8_t *f)
{
    if (pk->proto != 6 || !pk->payload_len)
        return 0;
    if ((pk->tcp_flags & 0x16) != 0x10 || pk->sport < pk->dport || pk->sport == 53 || pk->dport == 53)
        return 0;
    const uint8_t *pl = f + pk->payload_off;
    uint32_t n = pk->payload_len;
    if (pl[0] == 22 || (n >= 5 && memcmp(pl, "HTTP/", 5) == 0))
        return 0;
    uint32_t lim = n < 33 ? n : 33;
    for (uint32_t i = 0; i < lim; i++) {
        if (pl[i] == ' ')
            return i == 0;
        if (pl[i] < 0x21 || pl[i] > 0x7e)
            break;
    }
    return 1;
}

/* engine/transport/dispatch.py reverses_flight: a segment that could open a TLS server flight
 * (a handshake record) sent by the server from the higher port (a SYN-ACK or a reset answering
 * a probe, by the flag rules of mt_client_is_src). The worker would then follow that flight in
 * the direction headers_suffice cuts, so from then on the stager publishes every frame whole. */
static int reverses_flight(const mt_packet *pk, const uint8_t *f)
{
    return pk->proto == 6 && pk->payload_len && f[pk->payload_off] == 22 && pk->sport >= pk->dport &&
           !mt_client_is_src(pk);
}

/* ---- the stager -------------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    int have_view;
    uint8_t *base;          /* the ring: header, then the data area */
    uint8_t *data;
    uint64_t capacity, max_payload, head;
    /* the staging batch */
    uint32_t n;
    int64_t *ts;
    uint32_t *caplen, *wirelen;
    uint16_t *linktype;
    uint8_t *bytes;
    uint64_t used, alloc;
    double opened_at;       /* monotonic seconds when its first frame was staged */
    uint64_t dispatched;
} worker_t;

typedef struct {
    PyObject_HEAD
    int nrings;
    int live;
    int busy;
    uint32_t batch_frames;
    uint64_t k0, k1;
    worker_t *w;
    uint64_t frames, ring_waits, oversize_frames, over_snaplen_frames;
    uint64_t headers_only;      /* frames published as their headers alone (headers_suffice) */
    int whole_frames;           /* set once reverses_flight saw a segment: no more cuts */
    int64_t latest_ns;          /* the latest packet time taken in (valid once have_latest) */
    int have_latest;
} Stager;

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static inline uint64_t payload_bytes(uint64_t frames, uint64_t data_bytes)
{
    return align8(4 + FRAME_META_BYTES * frames) + data_bytes;
}

static inline void count_drop(worker_t *W, uint64_t frames)
{
    /* the producer owns these counters (Ring.count_drop); observers read them */
    uint64_t *df = (uint64_t *)(W->base + OFF_DROP_FRAMES), *db = (uint64_t *)(W->base + OFF_DROP_BATCHES);
    __atomic_store_n(df, __atomic_load_n(df, __ATOMIC_RELAXED) + frames, __ATOMIC_RELAXED);
    __atomic_store_n(db, __atomic_load_n(db, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

/* Ring.put(encode_batch(staged)): 1 when published (the staging batch is emptied), 0 when the
 * ring lacks the space (nothing written). */
static int try_publish(worker_t *W)
{
    uint32_t n = W->n;
    uint64_t size = payload_bytes(n, W->used);
    uint64_t need = 8 + align8(size);
    uint64_t head = W->head, cap = W->capacity;
    uint64_t index = head % cap, contiguous = cap - index;
    uint64_t total = need <= contiguous ? need : contiguous + need;
    uint64_t tail = __atomic_load_n((uint64_t *)(W->base + OFF_TAIL), __ATOMIC_ACQUIRE);
    if (cap - (head - tail) < total)
        return 0;
    if (need > contiguous) {
        put_le32(W->data + index, (uint32_t)(contiguous - 8));
        put_le32(W->data + index + 4, KIND_PAD);
        head += contiguous;
        index = 0;
    }
    uint8_t *m = W->data + index;
    put_le32(m, (uint32_t)size);
    put_le32(m + 4, KIND_BATCH);
    uint8_t *p = m + 8;
    put_le32(p, n); /* "<I", then the arrays in host order, as array.tobytes() writes them */
    p += 4;
    memcpy(p, W->ts, 8 * (size_t)n);
    p += 8 * (size_t)n;
    memcpy(p, W->caplen, 4 * (size_t)n);
    p += 4 * (size_t)n;
    memcpy(p, W->wirelen, 4 * (size_t)n);
    p += 4 * (size_t)n;
    memcpy(p, W->linktype, 2 * (size_t)n);
    p += 2 * (size_t)n;
    uint64_t head_bytes = 4 + FRAME_META_BYTES * (uint64_t)n;
    memset(p, 0, align8(head_bytes) - head_bytes);
    p += align8(head_bytes) - head_bytes;
    memcpy(p, W->bytes, W->used);
    head += need;
    W->head = head;
    __atomic_store_n((uint64_t *)(W->base + OFF_HEAD), head, __ATOMIC_RELEASE);
    W->n = 0;
    W->used = 0;
    return 1;
}

/* Publishes the staging batch; live: a batch that does not fit is dropped and counted. Returns
 * 1 when the staging batch is empty afterwards, 0 (replay) when the ring is full. */
static int publish(Stager *s, worker_t *W)
{
    if (!W->n || try_publish(W))
        return 1;
    if (!s->live)
        return 0;
    count_drop(W, W->n);
    W->n = 0;
    W->used = 0;
    return 1;
}

static int grow_bytes(worker_t *W, uint64_t need)
{
    uint64_t size = W->alloc ? W->alloc : STAGE_INITIAL_BYTES;
    while (size < need)
        size *= 2;
    if (size > W->max_payload && need <= W->max_payload)
        size = W->max_payload;
    uint8_t *b = realloc(W->bytes, size);
    if (!b)
        return -1;
    W->bytes = b;
    W->alloc = size;
    return 0;
}

/* Stages one frame for worker w: ST_OK, ST_RING_FULL (replay; nothing staged, the caller offers
 * the frame again later) or ST_NOMEM. */
static int stage(Stager *s, int w, const uint8_t *frame, uint32_t caplen, uint32_t wirelen, int64_t ts,
                 uint16_t linktype)
{
    worker_t *W = &s->w[w];
    if (!s->have_latest || ts > s->latest_ns) {
        s->latest_ns = ts;
        s->have_latest = 1;
    }
    if (payload_bytes(1, caplen) > W->max_payload) {
        /* cannot travel in any message: counted as that worker's drop */
        count_drop(W, 1);
        s->oversize_frames++;
        return ST_OK;
    }
    if (W->n >= s->batch_frames || (W->n && payload_bytes(W->n + 1, W->used + caplen) > W->max_payload)) {
        /* a ring message must fit in half a ring: close the batch before this frame */
        if (!publish(s, W))
            return ST_RING_FULL;
    }
    if (W->used + caplen > W->alloc && grow_bytes(W, W->used + caplen) < 0)
        return ST_NOMEM;
    uint32_t i = W->n;
    if (i == 0 && s->live)
        W->opened_at = monotonic_s();
    W->ts[i] = ts;
    W->caplen[i] = caplen;
    W->wirelen[i] = wirelen;
    W->linktype[i] = linktype;
    memcpy(W->bytes + W->used, frame, caplen);
    W->used += caplen;
    W->n = i + 1;
    W->dispatched++;
    if (W->n >= s->batch_frames)
        publish(s, W); /* replay: a full ring leaves it staged; the next frame for it waits */
    return ST_OK;
}

/* The frame's worker; *publish_len (when not NULL) gets how many of its bytes to publish: all of
 * them, or its headers alone when headers_suffice (the frame's decode is shared by both). */
static inline int route(Stager *s, const uint8_t *frame, uint32_t caplen, int linktype, uint32_t *publish_len)
{
    mt_packet pk;
    int decoded = mt_decode(frame, caplen, linktype, &pk) == MT_OK;
    if (publish_len) {
        *publish_len = caplen;
        if (decoded && !s->whole_frames) {
            if (reverses_flight(&pk, frame))
                s->whole_frames = 1;
            else if (headers_suffice(&pk, frame))
                *publish_len = pk.payload_off;
        }
    }
    if (s->nrings == 1)
        return 0;
    uint8_t key[KEY_MAX_BYTES];
    size_t k = dispatch_key(decoded ? &pk : NULL, frame, caplen, key);
    return (int)(siphash24(s->k0, s->k1, key, k) % (uint64_t)s->nrings);
}

static void release_rings(Stager *s)
{
    if (!s->w)
        return;
    for (int i = 0; i < s->nrings; i++) {
        worker_t *W = &s->w[i];
        if (W->have_view)
            PyBuffer_Release(&W->view);
        W->have_view = 0;
        free(W->ts);
        free(W->caplen);
        free(W->wirelen);
        free(W->linktype);
        free(W->bytes);
    }
    PyMem_Free(s->w);
    s->w = NULL;
}

static int usable(Stager *s)
{
    if (!s->w) {
        PyErr_SetString(PyExc_ValueError, "the stager is closed");
        return 0;
    }
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the stager is in use by another thread");
        return 0;
    }
    return 1;
}

static PyObject *status_error(int status)
{
    if (status == ST_NOMEM)
        return PyErr_NoMemory();
    return NULL;
}

static int Stager_init(Stager *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"rings", "seed", "batch_frames", "live", NULL};
    PyObject *rings;
    Py_buffer seed;
    Py_ssize_t batch_frames;
    int live;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*np", names, &rings, &seed, &batch_frames, &live))
        return -1;
    if (s->busy) {
        PyBuffer_Release(&seed);
        PyErr_SetString(PyExc_RuntimeError, "the stager is in use by another thread");
        return -1;
    }
    if (seed.len != 16) {
        PyBuffer_Release(&seed);
        PyErr_SetString(PyExc_ValueError, "seed must be 16 bytes");
        return -1;
    }
    s->k0 = get_le64(seed.buf);
    s->k1 = get_le64((uint8_t *)seed.buf + 8);
    PyBuffer_Release(&seed);
    if (batch_frames < 1 || batch_frames > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "batch_frames must be between 1 and 1048576");
        return -1;
    }
    PyObject *seq = PySequence_Fast(rings, "rings must be a sequence of writable buffers");
    if (!seq)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count < 1 || count > 4096) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "between 1 and 4096 rings");
        return -1;
    }
    release_rings(s);
    s->w = PyMem_Calloc((size_t)count, sizeof(worker_t));
    if (!s->w) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    s->nrings = (int)count;
    s->live = live;
    s->batch_frames = (uint32_t)batch_frames;
    s->frames = s->ring_waits = s->oversize_frames = s->over_snaplen_frames = s->headers_only = 0;
    s->whole_frames = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        worker_t *W = &s->w[i];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &W->view, PyBUF_WRITABLE) < 0)
            goto fail;
        W->have_view = 1;
        W->base = W->view.buf;
        if (W->view.len < RING_HEADER_BYTES || memcmp(W->base, "MTRING01", 8) != 0) {
            PyErr_Format(PyExc_ValueError, "ring %zd is not a ring", i);
            goto fail;
        }
        W->capacity = get_le64(W->base + 8);
        if (W->capacity < 64 || W->capacity % 8 || (uint64_t)W->view.len < RING_HEADER_BYTES + W->capacity) {
            PyErr_Format(PyExc_ValueError, "ring %zd has a bad capacity", i);
            goto fail;
        }
        if ((uintptr_t)W->base % 8) {
            PyErr_Format(PyExc_ValueError, "ring %zd is not 8-byte aligned", i);
            goto fail;
        }
        W->data = W->base + RING_HEADER_BYTES;
        W->max_payload = W->capacity / 2 - 16;
        W->head = __atomic_load_n((uint64_t *)(W->base + OFF_HEAD), __ATOMIC_ACQUIRE);
        W->ts = malloc(8 * (size_t)batch_frames);
        W->caplen = malloc(4 * (size_t)batch_frames);
        W->wirelen = malloc(4 * (size_t)batch_frames);
        W->linktype = malloc(2 * (size_t)batch_frames);
        if (!W->ts || !W->caplen || !W->wirelen || !W->linktype || grow_bytes(W, 1) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    release_rings(s);
    return -1;
}

static void Stager_dealloc(Stager *s)
{
    release_rings(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

PyDoc_STRVAR(add_pcap_doc,
"add_pcap(buffer, start, end, byte_swapped, nanosecond, linktype, snaplen_cut, *, record_bytes=16,\n"
"         max_caplen=262144, swap_lengths=0, file_snaplen=snaplen_cut) -> (consumed, frames, status)\n\n"
"Walks classic pcap records in buffer[start:end]: dispatches and stages each frame (cut to\n"
"snaplen_cut; wirelen reported as max(wirelen, caplen)), publishing full batches. Stops at a\n"
"partial record (status OK, consumed < end - start: refill and call again), at a record claiming\n"
"more than max_caplen bytes (BAD_RECORD, consumed up to it), or (replay) at a frame whose ring is\n"
"full (RING_FULL: call again from start + consumed later). record_bytes 24 is the Kuznetzov\n"
"variant; swap_lengths 2 swaps caplen and wirelen (pcap < 2.3), 1 swaps them when caplen > wirelen\n"
"(2.3). Frames longer than file_snaplen are counted in over_snaplen_frames.");

static PyObject *Stager_add_pcap(Stager *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buffer", "start", "end", "byte_swapped", "nanosecond", "linktype", "snaplen_cut",
                            "record_bytes", "max_caplen", "swap_lengths", "file_snaplen", NULL};
    Py_buffer view;
    Py_ssize_t start, end, record_bytes = 16;
    int swapped, nanosecond, linktype, swap_lengths = 0;
    unsigned long long cut, max_caplen = 262144, file_snaplen = (unsigned long long)-1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*nnppiK|$nKiK", names, &view, &start, &end, &swapped, &nanosecond,
                                     &linktype, &cut, &record_bytes, &max_caplen, &swap_lengths, &file_snaplen))
        return NULL;
    if (!usable(s)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (start < 0 || end < start || end > view.len || (record_bytes != 16 && record_bytes != 24) ||
        linktype < 0 || linktype > 0xFFFF) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "bad range, record_bytes or linktype");
        return NULL;
    }
    if (file_snaplen == (unsigned long long)-1)
        file_snaplen = cut;
    const uint8_t *b = view.buf;
    uint64_t pos = (uint64_t)start, stop = (uint64_t)end, frac_ns = nanosecond ? 1 : 1000;
    uint64_t added = 0, over = 0;
    int status = ST_OK;
    s->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (stop - pos >= (uint64_t)record_bytes) {
        const uint8_t *h = b + pos;
        uint32_t sec = rd32(h, swapped), frac = rd32(h + 4, swapped);
        uint32_t caplen = rd32(h + 8, swapped), wirelen = rd32(h + 12, swapped);
        if (swap_lengths && (swap_lengths == 2 || caplen > wirelen)) {
            uint32_t t = caplen;
            caplen = wirelen;
            wirelen = t;
        }
        if (caplen > max_caplen) {
            status = ST_BAD_RECORD;
            break;
        }
        if (stop - pos - (uint64_t)record_bytes < caplen)
            break;
        const uint8_t *frame = h + record_bytes;
        uint32_t out = caplen > cut ? (uint32_t)cut : caplen;
        int64_t ts = (int64_t)((uint64_t)sec * 1000000000ULL + (uint64_t)frac * frac_ns);
        uint32_t publish_len;
        int w = route(s, frame, out, linktype, &publish_len);
        status = stage(s, w, frame, publish_len, wirelen > caplen ? wirelen : caplen, ts, (uint16_t)linktype);
        if (status != ST_OK)
            break;
        if (publish_len < out)
            s->headers_only++;
        if (caplen > cut && caplen > file_snaplen)
            over++;
        pos += (uint64_t)record_bytes + caplen;
        added++;
    }
    Py_END_ALLOW_THREADS
    s->busy = 0;
    PyBuffer_Release(&view);
    s->frames += added;
    s->over_snaplen_frames += over;
    if (status == ST_RING_FULL)
        s->ring_waits++;
    if (status < 0)
        return status_error(status);
    return Py_BuildValue("(KKi)", (unsigned long long)(pos - (uint64_t)start), (unsigned long long)added, status);
}

typedef struct {
    Py_buffer v;
    int have;
} arg_view;

static int get_array(PyObject *obj, arg_view *a, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, &a->v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    a->have = 1;
    if (a->v.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must hold %zd-byte items", what, itemsize);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(add_batch_doc,
"add_batch(buf, offsets, caplens, wirelens, ts_ns, linktypes, start=0) -> (next_index, status)\n\n"
"Dispatches and stages frames start.. of an already-read FrameBatch (arrays 'Q','I','I','q','H').\n"
"Replay: RING_FULL at the first frame whose ring is full (call again from next_index later).");

static PyObject *Stager_add_batch(Stager *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buf", "offsets", "caplens", "wirelens", "ts_ns", "linktypes", "start", NULL};
    PyObject *objs[5];
    Py_buffer buf;
    Py_ssize_t first = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*OOOOO|n", names, &buf, &objs[0], &objs[1], &objs[2], &objs[3],
                                     &objs[4], &first))
        return NULL;
    arg_view a[5];
    memset(a, 0, sizeof(a));
    static const Py_ssize_t sizes[5] = {8, 4, 4, 8, 2};
    static const char *what[5] = {"offsets", "caplens", "wirelens", "ts_ns", "linktypes"};
    PyObject *result = NULL;
    if (!usable(s))
        goto done;
    for (int i = 0; i < 5; i++)
        if (get_array(objs[i], &a[i], sizes[i], what[i]) < 0)
            goto done;
    Py_ssize_t n = a[0].v.len / 8;
    for (int i = 1; i < 5; i++)
        if (a[i].v.len / sizes[i] != n) {
            PyErr_SetString(PyExc_ValueError, "the batch's arrays differ in length");
            goto done;
        }
    if (first < 0 || first > n) {
        PyErr_SetString(PyExc_ValueError, "start outside the batch");
        goto done;
    }
    const uint64_t *offsets = a[0].v.buf;
    const uint32_t *caplens = a[1].v.buf, *wirelens = a[2].v.buf;
    const int64_t *ts = a[3].v.buf;
    const uint16_t *linktypes = a[4].v.buf;
    for (Py_ssize_t i = first; i < n; i++)
        if (offsets[i] > (uint64_t)buf.len || caplens[i] > (uint64_t)buf.len - offsets[i]) {
            PyErr_Format(PyExc_ValueError, "frame %zd lies outside the buffer", i);
            goto done;
        }
    const uint8_t *b = buf.buf;
    Py_ssize_t i = first;
    int status = ST_OK;
    s->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (; i < n; i++) {
        const uint8_t *frame = b + offsets[i];
        uint32_t publish_len;
        int w = route(s, frame, caplens[i], linktypes[i], &publish_len);
        status = stage(s, w, frame, publish_len, wirelens[i], ts[i], linktypes[i]);
        if (status != ST_OK)
            break;
        if (publish_len < caplens[i])
            s->headers_only++;
    }
    Py_END_ALLOW_THREADS
    s->busy = 0;
    s->frames += (uint64_t)(i - first);
    if (status == ST_RING_FULL)
        s->ring_waits++;
    if (status < 0)
        status_error(status);
    else
        result = Py_BuildValue("(ni)", i, status);
done:
    for (int k = 0; k < 5; k++)
        if (a[k].have)
            PyBuffer_Release(&a[k].v);
    PyBuffer_Release(&buf);
    return result;
}

PyDoc_STRVAR(flush_doc,
"flush(max_age_s=-1.0) -> status\n\n"
"Publishes every partly filled staging batch (only those whose first frame was staged at least\n"
"max_age_s ago, live, when max_age_s >= 0). Replay: RING_FULL when one did not fit yet (it stays\n"
"staged; call again later). Live: a batch that does not fit is dropped and counted.");

static PyObject *Stager_flush(Stager *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"max_age_s", NULL};
    double max_age = -1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|d", names, &max_age) || !usable(s))
        return NULL;
    double now = max_age >= 0 ? monotonic_s() : 0.0;
    int status = ST_OK;
    for (int i = 0; i < s->nrings; i++) {
        worker_t *W = &s->w[i];
        if (!W->n || (max_age >= 0 && s->live && now - W->opened_at < max_age))
            continue;
        if (!publish(s, W))
            status = ST_RING_FULL;
    }
    if (status == ST_RING_FULL)
        s->ring_waits++;
    return PyLong_FromLong(status);
}

PyDoc_STRVAR(mark_doc,
"mark(w) -> bool\n\n"
"Publishes an empty batch to ring w: the mark of a timeline break (a replayed file that starts\n"
"before the packets already replayed). Ring w must hold no staged frames (flush first); False\n"
"when the ring is full (call again later).");

static PyObject *Stager_mark(Stager *s, PyObject *arg)
{
    long w = PyLong_AsLong(arg);
    if (w == -1 && PyErr_Occurred())
        return NULL;
    if (!usable(s))
        return NULL;
    if (w < 0 || w >= s->nrings || s->w[w].n) {
        PyErr_SetString(PyExc_ValueError, "no such ring, or it still holds staged frames");
        return NULL;
    }
    return PyBool_FromLong(try_publish(&s->w[w]));
}

static PyObject *Stager_worker_for(Stager *s, PyObject *args)
{
    Py_buffer frame;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*i", &frame, &linktype))
        return NULL;
    if (!s->w || frame.len > UINT32_MAX) {
        PyBuffer_Release(&frame);
        PyErr_SetString(PyExc_ValueError, "the stager is closed");
        return NULL;
    }
    int w = route(s, frame.buf, (uint32_t)frame.len, linktype, NULL);
    PyBuffer_Release(&frame);
    return PyLong_FromLong(w);
}

static PyObject *Stager_close(Stager *s, PyObject *unused)
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the stager is in use by another thread");
        return NULL;
    }
    release_rings(s);
    Py_RETURN_NONE;
}

static PyObject *Stager_get_dispatched(Stager *s, void *closure)
{
    PyObject *out = PyList_New(s->w ? s->nrings : 0);
    if (!out || !s->w)
        return out;
    for (int i = 0; i < s->nrings; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->w[i].dispatched);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Stager_get_staged(Stager *s, void *closure)
{
    uint64_t n = 0;
    for (int i = 0; s->w && i < s->nrings; i++)
        n += s->w[i].n;
    return PyLong_FromUnsignedLongLong(n);
}

#define U64_GETTER(field)                                                                         \
    static PyObject *Stager_get_##field(Stager *s, void *c) { return PyLong_FromUnsignedLongLong(s->field); }
U64_GETTER(frames)
U64_GETTER(ring_waits)
U64_GETTER(oversize_frames)
U64_GETTER(over_snaplen_frames)
U64_GETTER(headers_only)

static PyObject *Stager_get_whole_frames(Stager *s, void *c) { return PyBool_FromLong(s->whole_frames); }

static PyObject *Stager_get_latest_ns(Stager *s, void *c)
{
    if (!s->have_latest)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(s->latest_ns);
}

static PyObject *Stager_get_rings(Stager *s, void *c) { return PyLong_FromLong(s->w ? s->nrings : 0); }

static PyGetSetDef Stager_getset[] = {
    {"dispatched", (getter)Stager_get_dispatched, NULL, "frames staged per worker", NULL},
    {"frames", (getter)Stager_get_frames, NULL, "frames taken in (staged, or dropped as too big)", NULL},
    {"ring_waits", (getter)Stager_get_ring_waits, NULL, "calls that returned RING_FULL", NULL},
    {"oversize_frames", (getter)Stager_get_oversize_frames, NULL,
     "frames dropped because no ring message can hold them", NULL},
    {"over_snaplen_frames", (getter)Stager_get_over_snaplen_frames, NULL,
     "pcap records longer than the file's snap length (cut to it)", NULL},
    {"headers_only", (getter)Stager_get_headers_only, NULL,
     "frames published as their headers alone (their payload cannot matter)", NULL},
    {"whole_frames", (getter)Stager_get_whole_frames, NULL,
     "True once a segment that could open a reversed TLS flight was seen: no frame is cut since", NULL},
    {"staged", (getter)Stager_get_staged, NULL, "frames staged and not yet published", NULL},
    {"latest_ns", (getter)Stager_get_latest_ns, NULL, "the latest packet time taken in (None before any)", NULL},
    {"rings", (getter)Stager_get_rings, NULL, "number of rings (0 once closed)", NULL},
    {NULL}};

static PyMethodDef Stager_methods[] = {
    {"add_pcap", (PyCFunction)(void (*)(void))Stager_add_pcap, METH_VARARGS | METH_KEYWORDS, add_pcap_doc},
    {"add_batch", (PyCFunction)(void (*)(void))Stager_add_batch, METH_VARARGS | METH_KEYWORDS, add_batch_doc},
    {"flush", (PyCFunction)(void (*)(void))Stager_flush, METH_VARARGS | METH_KEYWORDS, flush_doc},
    {"mark", (PyCFunction)Stager_mark, METH_O, mark_doc},
    {"worker_for", (PyCFunction)Stager_worker_for, METH_VARARGS,
     "worker_for(frame, linktype) -> int: the ring this frame goes to"},
    {"close", (PyCFunction)Stager_close, METH_NOARGS,
     "close(): releases the rings' buffers and the staging memory (staged frames are not published)"},
    {NULL}};

static PyTypeObject StagerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._capture.Stager",
    .tp_basicsize = sizeof(Stager),
    .tp_dealloc = (destructor)Stager_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Stager(rings, seed, batch_frames, live): per-worker batches staged in C and published "
              "into the rings (a list of ring buffers, engine/ring.py layout)",
    .tp_methods = Stager_methods,
    .tp_getset = Stager_getset,
    .tp_init = (initproc)Stager_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module functions ------------------------------------------------------------------- */

static PyObject *py_dispatch_key(PyObject *self, PyObject *args)
{
    Py_buffer frame;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*i", &frame, &linktype))
        return NULL;
    if (frame.len > UINT32_MAX) {
        PyBuffer_Release(&frame);
        PyErr_SetString(PyExc_ValueError, "frame too long");
        return NULL;
    }
    uint8_t key[KEY_MAX_BYTES];
    mt_packet pk;
    int decoded = mt_decode(frame.buf, (uint32_t)frame.len, linktype, &pk) == MT_OK;
    size_t k = dispatch_key(decoded ? &pk : NULL, frame.buf, (uint32_t)frame.len, key);
    PyBuffer_Release(&frame);
    return PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)k);
}

static PyObject *py_headers_cut(PyObject *self, PyObject *args)
{
    Py_buffer frame;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*i", &frame, &linktype))
        return NULL;
    mt_packet pk;
    PyObject *out;
    if (frame.len > UINT32_MAX || mt_decode(frame.buf, (uint32_t)frame.len, linktype, &pk) != MT_OK)
        out = Py_BuildValue("(OO)", Py_None, Py_False);
    else if (headers_suffice(&pk, frame.buf))
        out = Py_BuildValue("(IO)", pk.payload_off, Py_False);  /* never both: 22 opens one, not the other */
    else
        out = Py_BuildValue("(OO)", Py_None, reverses_flight(&pk, frame.buf) ? Py_True : Py_False);
    PyBuffer_Release(&frame);
    return out;
}

static PyObject *py_siphash24(PyObject *self, PyObject *args)
{
    Py_buffer key, data;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &data))
        return NULL;
    PyObject *out = NULL;
    if (key.len != 16)
        PyErr_SetString(PyExc_ValueError, "key must be 16 bytes");
    else
        out = PyLong_FromUnsignedLongLong(siphash24(get_le64(key.buf), get_le64((uint8_t *)key.buf + 8), data.buf,
                                                    (size_t)data.len));
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"dispatch_key", py_dispatch_key, METH_VARARGS,
     "dispatch_key(frame, linktype) -> bytes: engine.dispatch.dispatch_key, in C"},
    {"siphash24", py_siphash24, METH_VARARGS, "siphash24(key16, data) -> int: SipHash-2-4"},
    {"headers_cut", py_headers_cut, METH_VARARGS,
     "headers_cut(frame, linktype) -> (length or None, reverses): engine.dispatch.headers_cut, in C"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_capture",
                                    "The capture process's per-frame work: pcap walk, dispatch, ring writes",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__capture(void)
{
    if (PyType_Ready(&StagerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&StagerType);
    if (PyModule_AddObject(m, "Stager", (PyObject *)&StagerType) < 0 ||
        PyModule_AddIntConstant(m, "OK", ST_OK) < 0 || PyModule_AddIntConstant(m, "RING_FULL", ST_RING_FULL) < 0 ||
        PyModule_AddIntConstant(m, "BAD_RECORD", ST_BAD_RECORD) < 0 ||
        PyModule_AddIntConstant(m, "KEY_RAW_BYTES", KEY_RAW_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
