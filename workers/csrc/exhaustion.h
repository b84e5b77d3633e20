/*
 * exhaustion.h: the C twin of the DNS exhaustion heuristic (DnsHeuristics.observe_query in
 * workers/heuristics/dns.py) and of the name rules it uses: `judged` (_JUDGED_NAME), the
 * registered domain (workers.dns.registered_domain, the rule engine/transport/csrc/capture.c dispatches
 * by) and the numeric first label (_NUMERIC_LABEL).
 *
 * Step for step as the reference: per registered domain, the distinct subdomains queried in a
 * window of `window_us` that starts with the first of them (a query after the window starts a new
 * one); a query for a new subdomain once `threshold` are stored is the verdict. Domains leave least
 * recently used first when `max_domains` are held, and while the global budget of `max_subs`
 * stored subdomains is spent and another domain is held; a subdomain that still finds no room is
 * counted as not stored. Counters: evicted domains, subdomains not stored.
 *
 * Stored values: the registered domain and each subdomain as 64-bit keyed fingerprints
 * (keyhash.h; a random key per object, so nobody can choose two names that collide). Layout as in
 * window.h: an open-addressing index of hash tags, nodes holding their first subdomains inline.
 * Memory: at most max_domains nodes and max_subs fingerprints (beyond the inline ones, a domain's
 * set is an open-addressing table at most half full, freed when its window restarts or the
 * domain leaves).
 *
 * Never touches Python objects: it runs with the GIL released. Allocation failure returns -1.
 */
#ifndef MALTRAIL_EXHAUSTION_H
#define MALTRAIL_EXHAUSTION_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "window.h" /* MT_NIL, mt_index */

/* `\A[a-z0-9_-]+(?:\.[a-z0-9_-]+)+\Z` (workers/heuristics/dns.py _JUDGED_NAME) */
static inline int mt_judged(const uint8_t *s, size_t n)
{
    int dots = 0;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '.') {
            if (!label)
                return 0;
            dots++;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
            label++;
        } else {
            return 0;
        }
    }
    return dots > 0 && label > 0;
}

/* workers.dns.registered_domain: where the registered domain starts in the name (0: the whole
 * name). The last two labels, three when there are more than three labels and the second-level
 * one is at most three characters long. */
static inline size_t mt_regdom_start(const uint8_t *s, size_t n)
{
    size_t dots[3];
    int found = 0;
    size_t total = 0;
    for (size_t i = n; i-- > 0;) {
        if (s[i] == '.') {
            if (found < 3)
                dots[found++] = i;
            total++;
        }
    }
    if (total >= 3 && dots[0] - dots[1] - 1 <= 3)
        return dots[2] + 1;
    if (total >= 2)
        return dots[1] + 1;
    return 0;
}

/* `\A(?:\d+|\d+-\d+-\d+-\d+)\Z` (workers/heuristics/dns.py _NUMERIC_LABEL) */
static inline int mt_numeric_label(const uint8_t *s, size_t n)
{
    int groups = 1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            run++;
        } else if (s[i] == '-' && run) {
            groups++;
            run = 0;
        } else {
            return 0;
        }
    }
    return run > 0 && (groups == 1 || groups == 4);
}

#define MT_DX_FEW 2

typedef struct {
    uint64_t key;           /* fingerprint of the registered domain */
    uint32_t prev, next;    /* recency list; next free node while free */
    uint32_t nsubs, setcap; /* subdomains stored; setcap 0: they are in few[] */
    int64_t start;          /* window start, us */
    uint64_t few[MT_DX_FEW];
    uint64_t *set;          /* open addressing, 0 = empty slot */
} mt_dx_node;

typedef struct {
    uint32_t threshold;
    uint32_t max_domains;
    uint64_t max_subs;
    int64_t window_us;
    uint64_t stored, evicted_domains, unstored_subdomains;
    uint32_t count;         /* domains held */
    uint32_t used, cap;     /* nodes ever handed out, allocated */
    uint32_t free_head;
    mt_dx_node *nodes;
    mt_index index;
    uint32_t head, tail;
    const mt_hkey *hk;
} mt_dx;

static inline void mt_dx_init(mt_dx *x, uint32_t threshold, int64_t window_us, uint32_t max_domains, uint64_t max_subs,
                              const mt_hkey *hk)
{
    memset(x, 0, sizeof(*x));
    x->threshold = threshold;
    x->window_us = window_us;
    x->max_domains = max_domains;
    x->max_subs = max_subs;
    x->free_head = x->head = x->tail = MT_NIL;
    x->hk = hk;
}

static inline void mt_dx_free(mt_dx *x)
{
    for (uint32_t i = 0; i < x->used; i++)
        free(x->nodes[i].set);
    free(x->nodes);
    free(x->index.slot);
    x->nodes = NULL;
    x->index.slot = NULL;
    x->used = x->cap = x->count = 0;
}

static inline void mt_dx_unlink(mt_dx *x, uint32_t i)
{
    mt_dx_node *nd = &x->nodes[i];
    if (nd->prev != MT_NIL)
        x->nodes[nd->prev].next = nd->next;
    else
        x->head = nd->next;
    if (nd->next != MT_NIL)
        x->nodes[nd->next].prev = nd->prev;
    else
        x->tail = nd->prev;
}

static inline void mt_dx_append(mt_dx *x, uint32_t i)
{
    mt_dx_node *nd = &x->nodes[i];
    nd->prev = x->tail;
    nd->next = MT_NIL;
    if (x->tail != MT_NIL)
        x->nodes[x->tail].next = i;
    else
        x->head = i;
    x->tail = i;
}

static inline void mt_dx_clear_set(mt_dx_node *nd)
{
    free(nd->set);
    nd->set = NULL;
    nd->setcap = nd->nsubs = 0;
}

/* _evict_domain: the least recently used domain leaves with its subdomains. */
static inline void mt_dx_evict(mt_dx *x)
{
    uint32_t i = x->head;
    mt_dx_node *nd = &x->nodes[i];
    mt_index_remove(&x->index, (uint32_t)nd->key, i);
    mt_dx_unlink(x, i);
    x->stored -= nd->nsubs;
    x->evicted_domains++;
    mt_dx_clear_set(nd);
    nd->next = x->free_head;
    x->free_head = i;
    x->count--;
    if (x->head != MT_NIL) {                   /* the next one to go: have it in cache by then */
        const mt_dx_node *next = &x->nodes[x->head];
        __builtin_prefetch(&x->index.slot[mt_index_home(&x->index, (uint32_t)next->key)]);
        if (next->next != MT_NIL)
            __builtin_prefetch(&x->nodes[next->next]);
    }
}

static inline int mt_dx_grow(mt_dx *x)
{
    uint64_t want = x->cap ? (uint64_t)x->cap * 2 : 64;
    if (want > x->max_domains)
        want = x->max_domains;
    mt_dx_node *nodes = realloc(x->nodes, (size_t)want * sizeof(mt_dx_node));
    if (!nodes)
        return -1;
    x->nodes = nodes;
    x->cap = (uint32_t)want;
    uint64_t slots = 64;
    while (slots < want * 2)
        slots <<= 1;
    if (slots > (uint64_t)x->index.mask + 1 || !x->index.slot)
        return mt_index_resize(&x->index, slots);
    return 0;
}

static inline int mt_dx_set_has(const mt_dx_node *nd, uint64_t v)
{
    if (!nd->setcap) {
        for (uint32_t k = 0; k < nd->nsubs; k++)
            if (nd->few[k] == v)
                return 1;
        return 0;
    }
    uint32_t mask = nd->setcap - 1;
    for (uint32_t s = (uint32_t)(v >> 32) & mask;; s = (s + 1) & mask) {
        if (nd->set[s] == v)
            return 1;
        if (!nd->set[s])
            return 0;
    }
}

static inline void mt_dx_set_put(uint64_t *set, uint32_t cap, uint64_t v)
{
    uint32_t s = (uint32_t)(v >> 32) & (cap - 1);
    while (set[s])
        s = (s + 1) & (cap - 1);
    set[s] = v;
}

static inline int mt_dx_set_add(mt_dx_node *nd, uint64_t v)
{
    if (!nd->setcap && nd->nsubs < MT_DX_FEW) {
        nd->few[nd->nsubs++] = v;
        return 0;
    }
    if ((uint64_t)(nd->nsubs + 1) * 2 > nd->setcap) {  /* at most half full */
        uint32_t cap = nd->setcap ? nd->setcap * 2 : 8;
        uint64_t *set = calloc(cap, sizeof(uint64_t));
        if (!set)
            return -1;
        if (!nd->setcap) {
            for (uint32_t k = 0; k < nd->nsubs; k++)
                mt_dx_set_put(set, cap, nd->few[k]);
        } else {
            for (uint32_t k = 0; k < nd->setcap; k++)
                if (nd->set[k])
                    mt_dx_set_put(set, cap, nd->set[k]);
        }
        free(nd->set);
        nd->set = set;
        nd->setcap = cap;
    }
    mt_dx_set_put(nd->set, nd->setcap, v);
    nd->nsubs++;
    return 0;
}

/* What observe_query keys a query by: its registered domain and subdomain fingerprints (a
 * query the heuristic skips: judged, has a subdomain, not numeric, gets counts = 0). */
typedef struct {
    int counts;
    uint64_t key, sub;
} mt_dx_query;

static inline mt_dx_query mt_dx_prepare(const mt_dx *x, const uint8_t *name, size_t n)
{
    mt_dx_query q = {0, 0, 0};
    if (!mt_judged(name, n))
        return q;
    size_t start = mt_regdom_start(name, n);
    if (start == 0)
        return q;                            /* a registered domain itself: no subdomain */
    size_t sub_len = start - 1;
    const uint8_t *dot = memchr(name, '.', sub_len);
    if (mt_numeric_label(name, dot ? (size_t)(dot - name) : sub_len))
        return q;                            /* DNSBL and reverse lookups */
    q.counts = 1;
    q.key = mt_keyed_hash(x->hk, name + start, n - start);
    q.sub = mt_keyed_hash(x->hk, name, sub_len);
    if (!q.sub)
        q.sub = 1;
    if (x->count)                            /* the lookup's index line, early */
        __builtin_prefetch(&x->index.slot[mt_index_home(&x->index, (uint32_t)q.key)]);
    return q;
}

/* DnsHeuristics.observe_query for a prepared query: 1 for a new subdomain beyond the threshold,
 * 0 otherwise, -1 when out of memory. */
static inline int mt_dx_observe_prepared(mt_dx *x, mt_dx_query q, int64_t ts)
{
    if (!q.counts)
        return 0;
    uint64_t key = q.key, sub = q.sub;
    uint32_t tag = (uint32_t)key, i = MT_NIL;
    if (x->count) {
        for (uint32_t at = mt_index_home(&x->index, tag);; at = (at + 1) & x->index.mask) {
            uint64_t word = x->index.slot[at];
            if (!word)
                break;
            if ((uint32_t)(word >> 32) == tag && x->nodes[(uint32_t)word - 1].key == key) {
                i = (uint32_t)word - 1;
                break;
            }
        }
    }
    mt_dx_node *nd;
    if (i == MT_NIL) {
        if (x->count >= x->max_domains)
            mt_dx_evict(x);
        if (x->free_head != MT_NIL) {
            i = x->free_head;
            x->free_head = x->nodes[i].next;
        } else {
            if (x->used == x->cap && mt_dx_grow(x) < 0)
                return -1;
            i = x->used++;
            x->nodes[i].set = NULL;
            x->nodes[i].setcap = x->nodes[i].nsubs = 0;
        }
        nd = &x->nodes[i];
        nd->key = key;
        nd->start = ts;
        mt_index_put(&x->index, tag, i);
        mt_dx_append(x, i);
        x->count++;
    } else {
        nd = &x->nodes[i];
        if (x->tail != i) {
            mt_dx_unlink(x, i);
            mt_dx_append(x, i);
        }
        if (ts - nd->start > x->window_us) {  /* the window is over: a new one starts here */
            x->stored -= nd->nsubs;
            mt_dx_clear_set(nd);
            nd->start = ts;
        }
    }
    if (mt_dx_set_has(nd, sub))
        return 0;
    if (nd->nsubs >= x->threshold)
        return 1;
    while (x->stored >= x->max_subs && x->count > 1)
        mt_dx_evict(x);                      /* never this domain: it is the most recent */
    if (x->stored >= x->max_subs) {
        x->unstored_subdomains++;
        return 0;
    }
    if (mt_dx_set_add(nd, sub) < 0)
        return -1;
    x->stored++;
    return 0;
}

/* DnsHeuristics.observe_query for a lower-case ASCII name. */
static inline int mt_dx_observe(mt_dx *x, const uint8_t *name, size_t n, int64_t ts)
{
    return mt_dx_observe_prepared(x, mt_dx_prepare(x, name, n), ts);
}

#endif /* MALTRAIL_EXHAUSTION_H */
