/*
 * needles.h: many literals searched at once in a byte string, for the heuristics' prefilters
 * (suspicious user agents, request and response literals, file-name literals).
 *
 * Literals and text are compared after a fold table (ASCII lower case, and for some sets every
 * whitespace character of a pattern's [ \t\n\r\x0b\x0c] mapped to one; or none at all), applied to
 * the text as it is read. One-byte literals are found with a 256-entry table; longer ones through a bitmap of
 * their first two bytes (8 KiB: almost every position of ordinary text misses it in L1) and, on a
 * hit, the few literals sharing those two bytes. Each literal carries flag bits (what it means to
 * the caller) and an id (its bit in the caller's "seen" bitset, for prefilter formulas).
 *
 * Built once from Python lists; read-only afterwards, so searching never allocates.
 */
#ifndef MALTRAIL_NEEDLES_H
#define MALTRAIL_NEEDLES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MT_LIT_MAX_BYTES 255

enum { MT_FOLD_LOWER = 0, MT_FOLD_LOWER_WS = 1, MT_FOLD_NONE = 2 };

static inline uint8_t mt_fold_byte(int fold, uint8_t c)
{
    if (fold == MT_FOLD_NONE)
        return c;
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (fold == MT_FOLD_LOWER_WS && ((c >= 9 && c <= 13) || c == ' '))
        return ' ';
    return c;
}

/* A growing list of distinct (folded) literals with flags: what a set is built from. */
typedef struct {
    int fold;
    uint8_t *blob;
    uint32_t *off, *len;
    uint8_t *flags;
    uint32_t n, cap;
    size_t blob_len, blob_cap;
} mt_litlist;

static inline void mt_litlist_init(mt_litlist *l, int fold)
{
    memset(l, 0, sizeof(*l));
    l->fold = fold;
}

static inline void mt_litlist_free(mt_litlist *l)
{
    free(l->blob);
    free(l->off);
    free(l->len);
    free(l->flags);
    memset(l, 0, sizeof(*l));
}

/* Adds a literal (folded here) or ORs flags into the same one already listed; returns its id,
 * -1 when out of memory, -2 for an empty or over-long literal. */
static inline int64_t mt_litlist_add(mt_litlist *l, const uint8_t *s, size_t n, uint8_t flags)
{
    uint8_t folded[MT_LIT_MAX_BYTES];
    if (n == 0 || n > MT_LIT_MAX_BYTES)
        return -2;
    for (size_t i = 0; i < n; i++)
        folded[i] = mt_fold_byte(l->fold, s[i]);
    for (uint32_t i = 0; i < l->n; i++) {
        if (l->len[i] == n && memcmp(l->blob + l->off[i], folded, n) == 0) {
            l->flags[i] |= flags;
            return i;
        }
    }
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 32;
        uint32_t *off = realloc(l->off, cap * sizeof(uint32_t));
        if (!off)
            return -1;
        l->off = off;
        uint32_t *len = realloc(l->len, cap * sizeof(uint32_t));
        if (!len)
            return -1;
        l->len = len;
        uint8_t *fl = realloc(l->flags, cap);
        if (!fl)
            return -1;
        l->flags = fl;
        l->cap = cap;
    }
    if (l->blob_len + n > l->blob_cap) {
        size_t cap = l->blob_cap ? l->blob_cap * 2 : 1024;
        while (cap < l->blob_len + n)
            cap *= 2;
        uint8_t *blob = realloc(l->blob, cap);
        if (!blob)
            return -1;
        l->blob = blob;
        l->blob_cap = cap;
    }
    memcpy(l->blob + l->blob_len, folded, n);
    l->off[l->n] = (uint32_t)l->blob_len;
    l->len[l->n] = (uint32_t)n;
    l->flags[l->n] = flags;
    l->blob_len += n;
    return l->n++;
}

/* The search structure over a finished list (which it takes over). What every position reads is
 * kept small (the fold table, a 256-bit set of one-byte literals, a 4096-bit filter of first byte
 * pairs: 13 cache lines), and what a hit reads is packed (an 8-byte slot for the pair, then 16-byte
 * records holding the literals' next bytes), so a search stays fast when the traffic around it has
 * pushed the tables out of the nearer caches. */
#define MT_PAIR_BITS 4096
#define MT_REC_BYTES 12         /* a literal's bytes after its first two kept in its record */
#define MT_LITS_MAX 65535

typedef struct {
    uint32_t pair1;             /* (a << 8 | b) + 1; 0 = empty */
    uint16_t start, count;      /* its records */
} mt_lit_slot;

typedef struct {
    uint16_t id;
    uint8_t len, flags;
    uint8_t rest[MT_REC_BYTES]; /* bytes 2 .. 2 + MT_REC_BYTES of the literal */
} mt_lit_rec;

typedef struct {
    mt_litlist lits;
    uint8_t fold[256];
    uint64_t single_bits[4];    /* bit a: a one-byte literal is (folded) byte a */
    uint64_t pairs[MT_PAIR_BITS / 64];  /* bit mt_pair_bit(a, b): a literal of 2+ bytes may start a, b */
    uint32_t single[256];       /* 1 + id of the one-byte literal with this (folded) byte, or 0 */
    uint32_t slot_mask;
    mt_lit_slot *slot;          /* open addressing by the first two bytes */
    mt_lit_rec *rec;
} mt_lits;

static inline uint32_t mt_pair_bit(uint32_t pair) { return (pair & 0x3F) | (pair >> 2 & 0xFC0); }

static inline uint32_t mt_lits_slot(const mt_lits *x, uint32_t pair)
{
    uint32_t s = (pair * 2654435761u >> 7) & x->slot_mask;
    while (x->slot[s].pair1 && x->slot[s].pair1 != pair + 1)
        s = (s + 1) & x->slot_mask;
    return s;
}

static inline void mt_lits_free(mt_lits *x)
{
    mt_litlist_free(&x->lits);
    free(x->slot);
    free(x->rec);
    memset(x, 0, sizeof(*x));
}

/* Builds the search structure; 0, -1 when out of memory, -2 with more than MT_LITS_MAX literals. */
static inline int mt_lits_build(mt_lits *x, mt_litlist *list)
{
    memset(x, 0, sizeof(*x));
    x->lits = *list;
    memset(list, 0, sizeof(*list));
    for (int c = 0; c < 256; c++)
        x->fold[c] = mt_fold_byte(x->lits.fold, (uint8_t)c);
    uint32_t n = x->lits.n, multi = 0;
    if (n > MT_LITS_MAX)
        return -2;
    for (uint32_t i = 0; i < n; i++)
        multi += x->lits.len[i] >= 2;
    uint32_t slots = 16;
    while (slots < multi * 2)
        slots <<= 1;
    x->slot_mask = slots - 1;
    x->slot = calloc(slots, sizeof(mt_lit_slot));
    x->rec = calloc(multi ? multi : 1, sizeof(mt_lit_rec));
    if (!x->slot || !x->rec)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *s = x->lits.blob + x->lits.off[i];
        if (x->lits.len[i] == 1) {
            x->single[s[0]] = i + 1;
            x->single_bits[s[0] >> 6] |= 1ull << (s[0] & 63);
            continue;
        }
        uint32_t pair = (uint32_t)s[0] << 8 | s[1], bit = mt_pair_bit(pair);
        x->pairs[bit >> 6] |= 1ull << (bit & 63);
        uint32_t slot = mt_lits_slot(x, pair);
        x->slot[slot].pair1 = pair + 1;
        x->slot[slot].count++;
    }
    uint32_t at = 0;
    for (uint32_t s = 0; s < slots; s++) {
        x->slot[s].start = (uint16_t)at;
        at += x->slot[s].count;
        x->slot[s].count = 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = x->lits.len[i];
        if (len < 2)
            continue;
        const uint8_t *s = x->lits.blob + x->lits.off[i];
        mt_lit_slot *sl = &x->slot[mt_lits_slot(x, (uint32_t)s[0] << 8 | s[1])];
        mt_lit_rec *r = &x->rec[sl->start + sl->count++];
        r->id = (uint16_t)i;
        r->len = (uint8_t)len;
        r->flags = x->lits.flags[i];
        memcpy(r->rest, s + 2, len - 2 < MT_REC_BYTES ? len - 2 : MT_REC_BYTES);
    }
    return 0;
}

static inline void mt_lits_hit(const mt_lits *x, uint32_t id, uint8_t id_flags, uint8_t *flags, uint64_t *seen)
{
    *flags |= id_flags;
    if (seen)
        seen[id >> 6] |= 1ull << (id & 63);
}

/* Searches text; ORs the flags of every literal found into *flags and sets its bit in `seen`
 * (when given). Returns early, with what it found so far, once (*flags & stop) != 0 (stop = 0:
 * never; the whole text is searched). */
static inline void mt_lits_search(const mt_lits *x, const uint8_t *t, size_t n, uint8_t stop, uint8_t *flags,
                                  uint64_t *seen)
{
    const uint8_t *fold = x->fold;
    if (!n)
        return;
    uint32_t a = fold[t[0]];
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t b = fold[t[i + 1]];
        uint32_t pair = a << 8 | b, bit = mt_pair_bit(pair);
        uint64_t single = (x->single_bits[a >> 6] >> (a & 63)) & 1, maybe = (x->pairs[bit >> 6] >> (bit & 63)) & 1;
        /* one test for both kinds: almost every position of ordinary text fails it */
        if (__builtin_expect(single | maybe, 0)) {
            if (single) {
                uint32_t id = x->single[a] - 1;
                mt_lits_hit(x, id, x->lits.flags[id], flags, seen);
                if (*flags & stop)
                    return;
            }
            if (maybe) {
                const mt_lit_slot *sl = &x->slot[mt_lits_slot(x, pair)];  /* empty if the filter erred */
                for (uint32_t k = 0; k < sl->count; k++) {
                    const mt_lit_rec *r = &x->rec[sl->start + k];
                    uint32_t len = r->len;
                    if (len > n - i)
                        continue;
                    uint32_t j = 2, inline_end = len < 2 + MT_REC_BYTES ? len : 2 + MT_REC_BYTES;
                    while (j < inline_end && fold[t[i + j]] == r->rest[j - 2])
                        j++;
                    if (j < inline_end)
                        continue;
                    if (len > inline_end) {
                        const uint8_t *lit = x->lits.blob + x->lits.off[r->id];
                        while (j < len && fold[t[i + j]] == lit[j])
                            j++;
                        if (j < len)
                            continue;
                    }
                    mt_lits_hit(x, r->id, r->flags, flags, seen);
                    if (*flags & stop)
                        return;
                }
            }
        }
        a = b;
    }
    if (x->single[a])
        mt_lits_hit(x, x->single[a] - 1, x->lits.flags[x->single[a] - 1], flags, seen);
}

#endif /* MALTRAIL_NEEDLES_H */
