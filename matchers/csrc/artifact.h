/*
 * artifact.h: header-only lookups over the sections of a compiled trail artifact.
 *
 * Owns the in-memory layout of the sections that C code reads directly (the trail table, the
 * string blob, the open-addressing hash tables and the key filters in front of them) and the hash
 * functions both the builder and the lookups use. Everything here works on read-only memory (an
 * mmap of the artifact shared by every worker), allocates nothing and never writes, but for the
 * key filter's builder (mt_filter_fill), which fills words its caller hands it. Included by matchers/_native.c today and by the C
 * worker path later, so lookups stay identical wherever they run.
 *
 * Must not know about packets, protocols, files or Python objects.
 */
#ifndef MALTRAIL_ARTIFACT_H
#define MALTRAIL_ARTIFACT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One trail: where its normalized key text lives in the string blob, what kind it is and which
 * (info, reference) pair describes it. 12 bytes, naturally aligned, little-endian on disk (the
 * artifact is only read on the machine kinds it is built on; the loader checks the byte order). */
typedef struct {
    uint32_t str_off;
    uint16_t str_len;
    uint8_t kind;
    uint8_t flags;
    uint32_t meta;
} mt_trail;

/* Hash table section: u32 capacity (a power of two), u32 count, then u32 tags[capacity] (the high
 * 32 bits of the key hash) and u32 ids[capacity] (trail id + 1; 0 marks an empty slot). Linear
 * probing; the builder keeps capacity > count so every probe sequence reaches an empty slot. */
typedef struct {
    const uint32_t *tags;
    const uint32_t *ids;
    uint32_t mask;
    uint32_t count;
    const mt_trail *trails;
    uint32_t ntrails;
    const uint8_t *strings;
    uint64_t strings_len;
} mt_table;

#define MT_TABLE_HEADER_BYTES 8u

/* FNV-1a over the key bytes, then the MurmurHash3 64-bit finalizer: FNV alone leaves the low bits
 * (the slot index) poorly mixed for keys that differ only in their last bytes, which domain
 * suffixes and URL paths often do. */
static inline uint64_t mt_hash64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Returns the trail id whose key equals key[0:n], or -1. The string compare only runs when the
 * 32-bit tag matches, so a miss touches the tag array and nothing else. Ids and string extents are
 * bounds-checked here rather than validated at load: a load then touches no pages, and a damaged
 * artifact can cause a miss but never a read outside its sections. The probe count is bounded by
 * the capacity for the same reason (a damaged table might have no empty slot). */
static inline int64_t mt_table_find(const mt_table *t, const uint8_t *key, size_t n)
{
    if (t->count == 0)
        return -1;
    uint64_t h = mt_hash64(key, n);
    uint32_t tag = (uint32_t)(h >> 32);
    uint32_t i = (uint32_t)h & t->mask;
    for (uint64_t probes = 0; probes <= t->mask; probes++) {
        uint32_t id1 = t->ids[i];
        if (id1 == 0)
            return -1;
        if (t->tags[i] == tag && id1 <= t->ntrails) {
            const mt_trail *tr = &t->trails[id1 - 1];
            if (tr->str_len == n && (uint64_t)tr->str_off + n <= t->strings_len &&
                memcmp(t->strings + tr->str_off, key, n) == 0)
                return (int64_t)id1 - 1;
        }
        i = (i + 1) & t->mask;
    }
    return -1;
}

/* Key filter section (a blocked Bloom filter in front of one hash table, format "filter 1"):
 * u32 version (MT_FILTER_VERSION), u32 log2 of its bit count, u32 the table's key count, u32 the
 * number of bits set, then u64 words[2^(log2 - 6)]. Every key of the table sets two bits of one
 * word, so a lookup that finds either bit clear knows the key is absent after one read of memory
 * that stays in cache (about 14 bits per key: 2 MB for the shared set's 1.16M domains, 256 KB for
 * its 165,000 URLs), instead of a probe of a table far larger than the caches. It never answers
 * "absent" for a key of its table; "maybe" for about 2% of other keys (then the table decides).
 * Its hash reads 8 bytes per step, several times faster than the table's FNV-1a on the long keys
 * URL candidates make, so a miss costs neither the table's hash nor its memory. Not keyed: a
 * key aimed at the filter's "maybe" only costs the table probe every key cost before. */
#define MT_FILTER_VERSION 1u
#define MT_FILTER_HEADER_BYTES 16u
#define MT_FILTER_MIN_LOG2 9u
#define MT_FILTER_MAX_LOG2 31u

typedef struct {
    const uint64_t *words;   /* NULL: no filter, every lookup goes to the table */
    uint32_t wmask;          /* word count - 1 */
} mt_filter;

static inline uint64_t mt_filter_mix(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* The filter's hash: 8 bytes per multiply, the last 1..8 bytes read as one little-endian word
 * (the artifact is little-endian only), the length mixed in so "a" and "a\0" differ. */
static inline uint64_t mt_filter_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0x243F6A8885A308D3ull ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull);
    while (n > 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mt_filter_mix(h ^ w, 0xA0761D6478BD642Full);
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = mt_filter_mix(h ^ w, 0xE7037ED1A0B428DBull);
    return mt_filter_mix(h, 0x8EBC6AF09C88C6E3ull);
}

/* Word index from the high half, the two bit positions from the low 12 bits. */
static inline int mt_filter_maybe(const mt_filter *f, uint64_t h)
{
    uint64_t need = (1ull << (h & 63)) | (1ull << ((h >> 6) & 63));
    return (f->words[(uint32_t)(h >> 32) & f->wmask] & need) == need;
}

/* Starts loading the word mt_filter_maybe(f, h) will read (batched lookups overlap their misses). */
static inline void mt_filter_prefetch(const mt_filter *f, uint64_t h)
{
    __builtin_prefetch(&f->words[(uint32_t)(h >> 32) & f->wmask]);
}

static inline void mt_filter_add(uint64_t *words, uint32_t wmask, uint64_t h)
{
    words[(uint32_t)(h >> 32) & wmask] |= (1ull << (h & 63)) | (1ull << ((h >> 6) & 63));
}

/* log2 of the bit count for `count` keys: the smallest power of two with >= 8 bits per key (so
 * 8 to 16 bits per key, 1-5% "maybe" for absent keys). */
static inline uint32_t mt_filter_log2_bits(uint32_t count)
{
    uint32_t l = MT_FILTER_MIN_LOG2;
    while (l < MT_FILTER_MAX_LOG2 && (1ull << l) < (uint64_t)count * 8)
        l++;
    return l;
}

static inline uint64_t mt_filter_section_bytes(uint32_t log2_bits)
{
    return MT_FILTER_HEADER_BYTES + ((uint64_t)1 << log2_bits) / 8;
}

/* The key in slot `i` of table `t`: 1 with *key and *len set, or 0 for an empty slot or one whose
 * id or string extent is out of bounds (mt_table_find never matches those). */
static inline int mt_table_key(const mt_table *t, uint64_t i, const uint8_t **key, size_t *len)
{
    uint32_t id1 = t->ids[i];
    if (id1 == 0 || id1 > t->ntrails)
        return 0;
    const mt_trail *tr = &t->trails[id1 - 1];
    if ((uint64_t)tr->str_off + tr->str_len > t->strings_len)
        return 0;
    *key = t->strings + tr->str_off;
    *len = tr->str_len;
    return 1;
}

/* Sets the bits of every key of table `t` into words[wmask + 1] (zeroed by the caller), skipping
 * the slots mt_table_key refuses. Returns the number of keys added. */
static inline uint32_t mt_filter_fill(uint64_t *words, uint32_t wmask, const mt_table *t)
{
    uint32_t added = 0;
    const uint8_t *key;
    size_t len;
    for (uint64_t i = 0; i <= t->mask; i++) {
        if (!mt_table_key(t, i, &key, &len))
            continue;
        mt_filter_add(words, wmask, mt_filter_hash(key, len));
        added++;
    }
    return added;
}

static inline uint64_t mt_popcount_words(const uint64_t *w, uint64_t n)
{
    uint64_t bits = 0;
    for (uint64_t i = 0; i < n; i++)
        bits += (uint64_t)__builtin_popcountll(w[i]);
    return bits;
}

/* Opens a filter section for table `t`: 0, or -1 with *why set when the section is not one
 * (wrong version, size, key count, or a bit count that is not what its header says: a filter
 * with bits lost would hide trails, so damage the CRC missed is refused too). Reads the whole
 * filter once (it is about to be read by every lookup anyway). */
static inline int mt_filter_open(mt_filter *f, const uint8_t *sec, size_t len, const mt_table *t, const char **why)
{
    uint32_t version, log2_bits, keys, set_bits;
    f->words = NULL;
    f->wmask = 0;
    if (len < MT_FILTER_HEADER_BYTES) {
        *why = "key filter section too short";
        return -1;
    }
    memcpy(&version, sec, 4);
    memcpy(&log2_bits, sec + 4, 4);
    memcpy(&keys, sec + 8, 4);
    memcpy(&set_bits, sec + 12, 4);
    if (version != MT_FILTER_VERSION) {
        *why = "key filter section of an unknown version";
        return -1;
    }
    if (log2_bits < MT_FILTER_MIN_LOG2 || log2_bits > MT_FILTER_MAX_LOG2 ||
        (uint64_t)len != mt_filter_section_bytes(log2_bits) || ((uintptr_t)sec & 7)) {
        *why = "key filter section has the wrong size";
        return -1;
    }
    if (keys != t->count) {
        *why = "key filter section was built for another table";
        return -1;
    }
    const uint64_t *words = (const uint64_t *)(sec + MT_FILTER_HEADER_BYTES);
    uint64_t nwords = ((uint64_t)1 << log2_bits) / 64;
    if (mt_popcount_words(words, nwords) != set_bits || (keys && !set_bits)) {
        *why = "key filter section is damaged (its bits are not the ones its header counts)";
        return -1;
    }
    f->words = words;
    f->wmask = (uint32_t)(nwords - 1);
    return 0;
}

/* mt_table_find behind the filter: the filter's "absent" is final. */
static inline int64_t mt_table_find_filtered(const mt_table *t, const mt_filter *f, const uint8_t *key, size_t n)
{
    if (t->count == 0)
        return -1;
    if (f->words && !mt_filter_maybe(f, mt_filter_hash(key, n)))
        return -1;
    return mt_table_find(t, key, n);
}

/* Portable roaring bitmap format (the one pyroaring's BitMap.serialize() writes), read in place.
 * Only membership is needed on the hot path. Layout facts from the Roaring format specification:
 * a cookie (12346 without run containers, 12347 with), container count, optional run bitset,
 * per-container (key, cardinality - 1) pairs, an offsets header, then the containers: arrays of
 * u16 (cardinality <= 4096), 8 KiB bitsets, or runs of (start, length - 1) u16 pairs. */
typedef struct {
    const uint8_t *base;
    size_t len;
    uint32_t ncontainers;
    const uint8_t *runbits;      /* NULL when the bitmap has no run containers */
    const uint8_t *keyscards;    /* ncontainers x (u16 key, u16 card-1) */
    const uint8_t *offsets;      /* ncontainers x u32, or NULL (no-run bitmaps with < 4 containers
                                    never omit it; run bitmaps with < 4 containers do) */
    const uint8_t *data;         /* start of container data when offsets is NULL */
    size_t end;                  /* bytes of `base` the bitmap occupies */
} mt_roaring;

static inline uint16_t mt_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t mt_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#define MT_SERIAL_COOKIE_NO_RUN 12346u
#define MT_SERIAL_COOKIE 12347u
#define MT_NO_OFFSET_THRESHOLD 4u

/* Parses the header; returns 0 on success, -1 on a malformed or truncated bitmap. After success
 * every container this reader may touch lies inside [base, base + len). */
static inline int mt_roaring_open(mt_roaring *r, const uint8_t *base, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->base = base;
    r->len = len;
    if (len < 4)
        return -1;
    uint32_t cookie = mt_rd32(base);
    size_t pos;
    if ((cookie & 0xFFFF) == MT_SERIAL_COOKIE) {
        r->ncontainers = (cookie >> 16) + 1;
        size_t nbytes = (r->ncontainers + 7) / 8;
        if (4 + nbytes > len)
            return -1;
        r->runbits = base + 4;
        pos = 4 + nbytes;
    } else if (cookie == MT_SERIAL_COOKIE_NO_RUN) {
        if (len < 8)
            return -1;
        r->ncontainers = mt_rd32(base + 4);
        pos = 8;
    } else {
        return -1;
    }
    if (r->ncontainers > 65536)
        return -1;
    if (pos + (size_t)r->ncontainers * 4 > len)
        return -1;
    r->keyscards = base + pos;
    pos += (size_t)r->ncontainers * 4;
    if (!r->runbits || r->ncontainers >= MT_NO_OFFSET_THRESHOLD) {
        if (pos + (size_t)r->ncontainers * 4 > len)
            return -1;
        r->offsets = base + pos;
        pos += (size_t)r->ncontainers * 4;
    }
    r->data = base + pos;
    /* Validate every container's extent once, so lookups need no bounds checks. */
    size_t walk = pos, end = pos;
    for (uint32_t c = 0; c < r->ncontainers; c++) {
        uint32_t card = (uint32_t)mt_rd16(r->keyscards + 4 * c + 2) + 1;
        int is_run = r->runbits && (r->runbits[c / 8] >> (c % 8)) & 1;
        size_t start = r->offsets ? mt_rd32(r->offsets + 4 * c) : walk;
        size_t size;
        if (is_run) {
            if (start + 2 > len)
                return -1;
            size = 2 + 4 * (size_t)mt_rd16(base + start);
        } else if (card > 4096) {
            size = 8192;
        } else {
            size = 2 * (size_t)card;
        }
        if (start + size > len)
            return -1;
        walk = start + size;
        if (walk > end)
            end = walk;
    }
    r->end = end;
    return 0;
}

static inline int mt_roaring_contains(const mt_roaring *r, uint32_t x)
{
    uint16_t hi = (uint16_t)(x >> 16), lo = (uint16_t)x;
    /* binary search the container keys */
    int32_t a = 0, b = (int32_t)r->ncontainers - 1, c = -1;
    while (a <= b) {
        int32_t m = (a + b) >> 1;
        uint16_t k = mt_rd16(r->keyscards + 4 * m);
        if (k == hi) { c = m; break; }
        if (k < hi) a = m + 1; else b = m - 1;
    }
    if (c < 0)
        return 0;
    uint32_t card = (uint32_t)mt_rd16(r->keyscards + 4 * c + 2) + 1;
    const uint8_t *p;
    if (r->offsets) {
        p = r->base + mt_rd32(r->offsets + 4 * c);
    } else {
        /* Only small run bitmaps omit offsets (fewer than 4 containers): walk to container c. */
        p = r->data;
        for (int32_t i = 0; i < c; i++) {
            uint32_t ci = (uint32_t)mt_rd16(r->keyscards + 4 * i + 2) + 1;
            int run = (r->runbits[i / 8] >> (i % 8)) & 1;
            p += run ? 2 + 4 * (size_t)mt_rd16(p) : (ci > 4096 ? 8192 : 2 * (size_t)ci);
        }
    }
    int is_run = r->runbits && (r->runbits[c / 8] >> (c % 8)) & 1;
    if (is_run) {
        uint16_t nruns = mt_rd16(p);
        const uint8_t *runs = p + 2;
        int32_t lo_i = 0, hi_i = (int32_t)nruns - 1, best = -1;
        while (lo_i <= hi_i) {               /* last run whose start <= lo */
            int32_t m = (lo_i + hi_i) >> 1;
            if (mt_rd16(runs + 4 * m) <= lo) { best = m; lo_i = m + 1; } else hi_i = m - 1;
        }
        if (best < 0)
            return 0;
        uint32_t start = mt_rd16(runs + 4 * best), length = mt_rd16(runs + 4 * best + 2);
        return lo <= start + length;
    }
    if (card > 4096)
        return (p[lo >> 3] >> (lo & 7)) & 1;
    int32_t lo_i = 0, hi_i = (int32_t)card - 1;
    while (lo_i <= hi_i) {
        int32_t m = (lo_i + hi_i) >> 1;
        uint16_t v = mt_rd16(p + 2 * m);
        if (v == lo) return 1;
        if (v < lo) lo_i = m + 1; else hi_i = m - 1;
    }
    return 0;
}

/* 64-bit portable roaring format (pyroaring's BitMap64.serialize()): a u64 count of buckets, then
 * per bucket, in ascending order of the high 32 bits, a u32 high key and a 32-bit portable bitmap
 * of the low 32 bits. The caller provides arrays for `cap` buckets. */
typedef struct {
    uint32_t n;
    uint32_t *keys;
    mt_roaring *maps;
} mt_roaring64;

/* Returns 0 on success, -1 on a malformed bitmap, -2 when it has more than `cap` buckets. */
static inline int mt_roaring64_open(mt_roaring64 *r, const uint8_t *base, size_t len, uint32_t cap)
{
    if (len < 8)
        return -1;
    uint64_t n = (uint64_t)mt_rd32(base) | ((uint64_t)mt_rd32(base + 4) << 32);
    if (n > cap)
        return -2;
    size_t pos = 8;
    for (uint64_t i = 0; i < n; i++) {
        if (pos + 4 > len)
            return -1;
        r->keys[i] = mt_rd32(base + pos);
        if (i && r->keys[i] <= r->keys[i - 1])
            return -1;
        pos += 4;
        if (mt_roaring_open(&r->maps[i], base + pos, len - pos) < 0)
            return -1;
        pos += r->maps[i].end;
    }
    r->n = (uint32_t)n;
    return 0;
}

static inline int mt_roaring64_contains(const mt_roaring64 *r, uint64_t x)
{
    uint32_t hi = (uint32_t)(x >> 32);
    int64_t a = 0, b = (int64_t)r->n - 1;
    while (a <= b) {
        int64_t m = (a + b) >> 1;
        if (r->keys[m] == hi)
            return mt_roaring_contains(&r->maps[m], (uint32_t)x);
        if (r->keys[m] < hi) a = m + 1; else b = m - 1;
    }
    return 0;
}

#endif /* MALTRAIL_ARTIFACT_H */
