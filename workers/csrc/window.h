/*
 * window.h: the C twin of workers/heuristics/window.py (DistinctWindow): "more than `threshold`
 * distinct values for this key within `window_us` of packet time", in bounded memory.
 *
 * Step for step as the Python reference, so both paths reach the same verdicts on the same
 * packets (tests/test_heuristics_fast.py holds them to it):
 * - per key, values in insertion order with the packet time they were last seen; a value seen
 *   again only moves its time forward (never back);
 * - a new value first drops every value that left the window (time <= ts - window), keeping the
 *   order of the rest; if threshold + 1 are still kept, the least recently seen one (the first of
 *   them on a tie) makes room; the new value goes last;
 * - the verdict: threshold + 1 values kept and the oldest of them inside the window;
 * - keys are least recently used first out once `max_keys` are held (`evicted_keys` counts
 *   them), exactly as the reference's OrderedDict (move_to_end on a hit, popitem(last=False)).
 *
 * Layout, for traffic where almost every packet brings a new key (a scan, random sources): an
 * open-addressing index of 64-bit words (32 bits of the key's hash, which also give the home slot,
 * and the node number), so a lookup reads one cache line of the index and only the node whose tag
 * matches; nodes hold their first value inline (no allocation for a key seen with one value);
 * the next key to be evicted is prefetched after every eviction. Keys are fixed MT_DW_KEY_BYTES
 * strings compared in full (callers write them as whole words: hashing reads them as words, and
 * a word read over a just-written byte stalls); values are 128 bits compared in full (the caller
 * hashes values that do not fit, e.g. a path segment), or 16 bits in a narrow window (the TCP and
 * UDP port scans count ports: an entry is then 10 bytes instead of 24, which halves what a flood of
 * scanners holds, every value still compared in full).
 *
 * Memory: at most max_keys nodes of 88 bytes (the pool grows by doubling up to it; an evicted node
 * is reused for the key that evicted it), an index of at most four times as many words, and at
 * most threshold + 1 values per key (by default 11 x 10 bytes for a port, 11 x 24 otherwise, in
 * one allocation once a key holds a second value).
 *
 * Never touches Python objects: it runs with the GIL released. Allocation failure returns -1.
 */
#ifndef MALTRAIL_WINDOW_H
#define MALTRAIL_WINDOW_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"

#define MT_DW_KEY_BYTES 36
#define MT_NIL 0xFFFFFFFFu

/* ---- an open-addressing index: slot word = (32-bit hash tag << 32) | (node + 1), 0 = empty ---- */

typedef struct {
    uint64_t *slot;
    uint32_t mask;              /* slots - 1; 0 before the first growth */
} mt_index;

static inline uint32_t mt_index_home(const mt_index *x, uint32_t tag) { return tag & x->mask; }

/* (Re)builds the index with `slots` slots (a power of two) from the words of an old one. */
static inline int mt_index_resize(mt_index *x, uint64_t slots)
{
    uint64_t *fresh = calloc(slots, sizeof(uint64_t));
    if (!fresh)
        return -1;
    mt_index old = *x;
    x->slot = fresh;
    x->mask = (uint32_t)(slots - 1);
    if (old.slot) {
        for (uint64_t s = 0; s <= old.mask; s++) {
            uint64_t w = old.slot[s];
            if (!w)
                continue;
            uint32_t at = mt_index_home(x, (uint32_t)(w >> 32));
            while (x->slot[at])
                at = (at + 1) & x->mask;
            x->slot[at] = w;
        }
        free(old.slot);
    }
    return 0;
}

static inline void mt_index_put(mt_index *x, uint32_t tag, uint32_t node)
{
    uint32_t at = mt_index_home(x, tag);
    while (x->slot[at])
        at = (at + 1) & x->mask;
    x->slot[at] = (uint64_t)tag << 32 | (node + 1);
}

/* Removes node's word (tag: its hash tag); backward-shift deletion keeps every probe run whole. */
static inline void mt_index_remove(mt_index *x, uint32_t tag, uint32_t node)
{
    uint32_t at = mt_index_home(x, tag);
    uint64_t want = (uint64_t)tag << 32 | (node + 1);
    while (x->slot[at] != want)
        at = (at + 1) & x->mask;
    uint32_t hole = at;
    for (uint32_t j = (hole + 1) & x->mask; x->slot[j]; j = (j + 1) & x->mask) {
        uint32_t home = mt_index_home(x, (uint32_t)(x->slot[j] >> 32));
        /* the word at j may move to the hole unless its home lies cyclically in (hole, j] */
        if (((j - home) & x->mask) >= ((j - hole) & x->mask)) {
            x->slot[hole] = x->slot[j];
            hole = j;
        }
    }
    x->slot[hole] = 0;
}

/* ---- the window ------------------------------------------------------------------------------ */

/* A value with the packet time it was last seen, stored as bytes at the window's stride: the time
 * (int64, 8 bytes) then the value, 16 bits in a narrow window (the port scans' ports: 10 bytes an
 * entry), 128 bits otherwise (addresses, path-segment hashes: 24 bytes). Entries are read and
 * written with memcpy, so the packed stride costs no alignment. */
#define MT_DW_NARROW_BYTES 10
#define MT_DW_WIDE_BYTES 24

typedef struct {
    uint8_t key[MT_DW_KEY_BYTES];
    uint32_t tag;               /* 32 bits of the key's hash (its index word) */
    uint32_t n, cap;            /* values held; cap 0: the one inline value, else `more` */
    uint32_t prev, next;        /* recency list: prev is less recently used */
    uint8_t *more;
    uint8_t one[MT_DW_WIDE_BYTES];
} mt_dw_node;

typedef struct {
    uint32_t keep;              /* threshold + 1 */
    uint32_t max_keys;
    uint32_t stride;            /* bytes per entry: MT_DW_NARROW_BYTES or MT_DW_WIDE_BYTES */
    int64_t window_us;
    uint64_t evicted_keys;
    uint32_t count, cap;        /* nodes in use, allocated */
    mt_dw_node *nodes;
    mt_index index;
    uint32_t head, tail;        /* least and most recently used */
    const mt_hkey *hk;
} mt_dwindow;

/* narrow: every value observed is below 65536 with hi 0 (a port); the caller promises it. */
static inline void mt_dw_init(mt_dwindow *w, uint32_t threshold, int64_t window_us, uint32_t max_keys, const mt_hkey *hk,
                              int narrow)
{
    memset(w, 0, sizeof(*w));
    w->keep = threshold + 1;
    w->window_us = window_us;
    w->max_keys = max_keys;
    w->stride = narrow ? MT_DW_NARROW_BYTES : MT_DW_WIDE_BYTES;
    w->head = w->tail = MT_NIL;
    w->hk = hk;
}

static inline int64_t mt_dw_ts(const uint8_t *e)
{
    int64_t ts;
    memcpy(&ts, e, 8);
    return ts;
}

static inline void mt_dw_set_ts(uint8_t *e, int64_t ts) { memcpy(e, &ts, 8); }

static inline int mt_dw_same(const mt_dwindow *w, const uint8_t *e, uint64_t lo, uint64_t hi)
{
    if (w->stride == MT_DW_NARROW_BYTES) {
        uint16_t v;
        memcpy(&v, e + 8, 2);
        return v == (uint16_t)lo;
    }
    return mt_load64(e + 8) == lo && mt_load64(e + 16) == hi;
}

static inline void mt_dw_put(const mt_dwindow *w, uint8_t *e, uint64_t lo, uint64_t hi, int64_t ts)
{
    mt_dw_set_ts(e, ts);
    if (w->stride == MT_DW_NARROW_BYTES) {
        uint16_t v = (uint16_t)lo;
        memcpy(e + 8, &v, 2);
    } else {
        memcpy(e + 8, &lo, 8);
        memcpy(e + 16, &hi, 8);
    }
}

static inline void mt_dw_free(mt_dwindow *w)
{
    for (uint32_t i = 0; i < w->count; i++)
        free(w->nodes[i].more);
    free(w->nodes);
    free(w->index.slot);
    w->nodes = NULL;
    w->index.slot = NULL;
    w->count = w->cap = 0;
}

static inline uint32_t mt_dw_tag(const mt_dwindow *w, const uint8_t *key)
{
    return (uint32_t)mt_keyed_hash(w->hk, key, MT_DW_KEY_BYTES);
}

static inline int mt_dw_grow(mt_dwindow *w)
{
    uint64_t want = w->cap ? (uint64_t)w->cap * 2 : 64;
    if (want > w->max_keys)
        want = w->max_keys;
    mt_dw_node *nodes = realloc(w->nodes, (size_t)want * sizeof(mt_dw_node));
    if (!nodes)
        return -1;
    w->nodes = nodes;
    w->cap = (uint32_t)want;
    uint64_t slots = 64;
    while (slots < want * 2)
        slots <<= 1;                           /* at most half full */
    if (slots > (uint64_t)w->index.mask + 1 || !w->index.slot)
        return mt_index_resize(&w->index, slots);
    return 0;
}

static inline void mt_dw_unlink(mt_dwindow *w, uint32_t i)
{
    mt_dw_node *nd = &w->nodes[i];
    if (nd->prev != MT_NIL)
        w->nodes[nd->prev].next = nd->next;
    else
        w->head = nd->next;
    if (nd->next != MT_NIL)
        w->nodes[nd->next].prev = nd->prev;
    else
        w->tail = nd->prev;
}

static inline void mt_dw_append(mt_dwindow *w, uint32_t i)
{
    mt_dw_node *nd = &w->nodes[i];
    nd->prev = w->tail;
    nd->next = MT_NIL;
    if (w->tail != MT_NIL)
        w->nodes[w->tail].next = i;
    else
        w->head = i;
    w->tail = i;
}

/* Asks for the index line a key's lookup will read (call early, observe later: the miss overlaps
 * whatever happens in between). */
static inline void mt_dw_prefetch(const mt_dwindow *w, uint32_t tag)
{
    if (w->count)
        __builtin_prefetch(&w->index.slot[mt_index_home(&w->index, tag)]);
}

/* DistinctWindow.observe (tag: mt_dw_tag(w, key)): 1 when the condition holds after recording, 0
 * when not, -1 when out of memory (the state is then unchanged apart from a possibly new, empty
 * key). */
static inline int mt_dw_observe_tagged(mt_dwindow *w, const uint8_t *key, uint32_t tag, uint64_t lo, uint64_t hi,
                                       int64_t ts)
{
    uint32_t i = MT_NIL;
    if (w->count) {
        for (uint32_t at = mt_index_home(&w->index, tag);; at = (at + 1) & w->index.mask) {
            uint64_t word = w->index.slot[at];
            if (!word)
                break;
            if ((uint32_t)(word >> 32) == tag &&
                memcmp(w->nodes[(uint32_t)word - 1].key, key, MT_DW_KEY_BYTES) == 0) {
                i = (uint32_t)word - 1;
                break;
            }
        }
    }
    mt_dw_node *nd;
    if (i == MT_NIL) {
        if (w->count >= w->max_keys) {
            /* popitem(last=False): the least recently used key makes room, its node is reused */
            i = w->head;
            nd = &w->nodes[i];
            mt_index_remove(&w->index, nd->tag, i);
            mt_dw_unlink(w, i);
            w->evicted_keys++;
            if (w->head != MT_NIL) {           /* the next one to go: have it in cache by then */
                const mt_dw_node *next = &w->nodes[w->head];
                __builtin_prefetch(&w->index.slot[mt_index_home(&w->index, next->tag)]);
                if (next->next != MT_NIL)
                    __builtin_prefetch(&w->nodes[next->next]);
            }
        } else {
            if (w->count == w->cap && mt_dw_grow(w) < 0)
                return -1;
            i = w->count++;
            nd = &w->nodes[i];
            nd->cap = 0;
            nd->more = NULL;
        }
        nd->n = 0;
        memcpy(nd->key, key, MT_DW_KEY_BYTES);
        nd->tag = tag;
        mt_index_put(&w->index, tag, i);
        mt_dw_append(w, i);
    } else {
        nd = &w->nodes[i];
        if (w->tail != i) {  /* move_to_end */
            mt_dw_unlink(w, i);
            mt_dw_append(w, i);
        }
    }
    int64_t horizon = ts - w->window_us;
    const uint32_t z = w->stride;
    uint8_t *e = nd->cap ? nd->more : nd->one;
    uint32_t k, n = nd->n;
    for (k = 0; k < n; k++) {
        if (mt_dw_same(w, e + k * z, lo, hi)) {
            if (ts > mt_dw_ts(e + k * z))
                mt_dw_set_ts(e + k * z, ts);
            break;
        }
    }
    if (k == n) {
        uint32_t kept = 0;
        for (k = 0; k < n; k++) {  /* values that left the window go, the rest keep their order */
            if (mt_dw_ts(e + k * z) > horizon) {
                if (kept != k)
                    memcpy(e + kept * z, e + k * z, z);
                kept++;
            }
        }
        n = kept;
        if (n >= w->keep) {
            uint32_t oldest = 0;
            for (k = 1; k < n; k++)
                if (mt_dw_ts(e + k * z) < mt_dw_ts(e + oldest * z))
                    oldest = k;
            memmove(e + oldest * z, e + (oldest + 1) * z, (size_t)(n - oldest - 1) * z);
            n--;
        }
        if (n == (nd->cap ? nd->cap : 1u)) {
            uint64_t want = nd->cap ? (uint64_t)nd->cap * 2 : 4;
            if (want > w->keep)
                want = w->keep;
            uint8_t *grown = realloc(nd->more, (size_t)want * z);  /* want <= keep */
            if (!grown) {
                nd->n = n;
                return -1;
            }
            if (!nd->cap)
                memcpy(grown, nd->one, z);     /* n == 1 here: the inline value moves out */
            nd->more = e = grown;
            nd->cap = (uint32_t)want;
        }
        mt_dw_put(w, e + n * z, lo, hi, ts);
        n++;
        nd->n = n;
    }
    if (n < w->keep)
        return 0;
    int64_t oldest = mt_dw_ts(e);
    for (k = 1; k < n; k++)
        if (mt_dw_ts(e + k * z) < oldest)
            oldest = mt_dw_ts(e + k * z);
    return oldest > horizon;
}

static inline int mt_dw_observe(mt_dwindow *w, const uint8_t *key, uint64_t lo, uint64_t hi, int64_t ts)
{
    return mt_dw_observe_tagged(w, key, mt_dw_tag(w, key), lo, hi, ts);
}

#endif /* MALTRAIL_WINDOW_H */
