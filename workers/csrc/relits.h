/*
 * relits.h: which literals a regular expression's matches must contain, as a formula over
 * literals, so that C can skip the text a Python regex could never match.
 *
 * For each pattern (Python `re` syntax, matched with re.IGNORECASE) it derives an AND/OR formula
 * of "this literal occurs in the text" facts that every match implies: a run of pattern pieces
 * that can only match a few short strings (literal characters, small classes, small optional
 * groups and alternations, fixed repeats) gives the set of strings one of which the match
 * contains; a concatenation needs all of its runs and pieces; an alternation one of its
 * branches; a repeat at least once its piece. Anything else (".", big or negated classes, \w,
 * back references, unknown syntax) requires nothing. The result is only ever weaker than the
 * regex: it may say "maybe" where the regex says no, never "no" where the regex matches, for
 * ASCII text compared after folding (lower case; with MT_FOLD_LOWER_WS, a pattern's whitespace
 * characters all fold to one). Text with other characters needs the caller's own care (Unicode
 * case folding lets 'K' (U+212A) match "k").
 *
 * This is the same idea as the literal prefilter of matchers/regextrails.py, carried through the
 * whole pattern instead of its top level. Runs once, when the heuristics are built; never on a
 * packet.
 */
#ifndef MALTRAIL_RELITS_H
#define MALTRAIL_RELITS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "needles.h"

#define RX_MAX_STRS 64          /* a run is at most this many alternative strings ... */
#define RX_MAX_LEN 32           /* ... of at most this many bytes */
#define RX_MAX_CLASS 16         /* classes with more (folded) characters are "anything" */
#define RX_MAX_DEPTH 100

/* ---- formulas over literal ids --------------------------------------------------------------- */

enum { MT_F_TRUE = 0, MT_F_LIT, MT_F_AND, MT_F_OR };

typedef struct {
    uint8_t op;
    uint32_t a, n;              /* LIT: a = literal id; AND/OR: kids[a .. a + n) */
} mt_fnode;

typedef struct {
    mt_fnode *node;
    uint32_t nnode, capnode;
    uint32_t *kid;
    uint32_t nkid, capkid;
} mt_formula;

static inline void mt_formula_free(mt_formula *f)
{
    free(f->node);
    free(f->kid);
    memset(f, 0, sizeof(*f));
}

/* Appends a node; returns its index or -1. */
static inline int64_t mt_formula_node(mt_formula *f, uint8_t op, uint32_t a, uint32_t n)
{
    if (f->nnode == f->capnode) {
        uint32_t cap = f->capnode ? f->capnode * 2 : 64;
        mt_fnode *node = realloc(f->node, cap * sizeof(mt_fnode));
        if (!node)
            return -1;
        f->node = node;
        f->capnode = cap;
    }
    f->node[f->nnode] = (mt_fnode){op, a, n};
    return f->nnode++;
}

/* An AND/OR node over kids (node indexes); TRUE kids are dropped from an AND and make an OR
 * TRUE. Returns the node index, or -1 when out of memory. */
static inline int64_t mt_formula_join(mt_formula *f, uint8_t op, const uint32_t *kids, uint32_t n)
{
    uint32_t keep = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (f->node[kids[i]].op == MT_F_TRUE) {
            if (op == MT_F_OR)
                return mt_formula_node(f, MT_F_TRUE, 0, 0);
            continue;
        }
        keep++;
    }
    if (keep == 0)
        return mt_formula_node(f, MT_F_TRUE, 0, 0);
    if (keep == 1)
        for (uint32_t i = 0; i < n; i++)
            if (f->node[kids[i]].op != MT_F_TRUE)
                return kids[i];
    if (f->nkid + keep > f->capkid) {
        uint32_t cap = f->capkid ? f->capkid : 64;
        while (cap < f->nkid + keep)
            cap *= 2;
        uint32_t *kid = realloc(f->kid, cap * sizeof(uint32_t));
        if (!kid)
            return -1;
        f->kid = kid;
        f->capkid = cap;
    }
    uint32_t start = f->nkid;
    for (uint32_t i = 0; i < n; i++)
        if (f->node[kids[i]].op != MT_F_TRUE)
            f->kid[f->nkid++] = kids[i];
    return mt_formula_node(f, op, start, keep);
}

static inline int mt_formula_eval(const mt_formula *f, uint32_t at, const uint64_t *seen)
{
    const mt_fnode *nd = &f->node[at];
    switch (nd->op) {
    case MT_F_LIT:
        return (seen[nd->a >> 6] >> (nd->a & 63)) & 1;
    case MT_F_AND:
        for (uint32_t i = 0; i < nd->n; i++)
            if (!mt_formula_eval(f, f->kid[nd->a + i], seen))
                return 0;
        return 1;
    case MT_F_OR:
        for (uint32_t i = 0; i < nd->n; i++)
            if (mt_formula_eval(f, f->kid[nd->a + i], seen))
                return 1;
        return 0;
    default:
        return 1;
    }
}

/* ---- evaluating only what the text's literals can trigger -------------------------------------
 *
 * The formula for a set of patterns is an OR of many disjuncts (every alternative of every
 * pattern), most of which a given text cannot satisfy. Each disjunct gets a trigger: a set of
 * literals one of which it needs (for an AND, its most selective clause). After a search, only the
 * disjuncts triggered by a literal that was found are evaluated. */

typedef struct {
    uint32_t *first;            /* literal id -> its disjuncts: disj[first[id] .. first[id + 1]) */
    uint32_t *disj;             /* formula nodes */
    uint32_t *untriggered;      /* disjuncts with no trigger (evaluated every time) */
    uint32_t n_untriggered;
    uint32_t n_lits;
} mt_trigger;

static inline void mt_trigger_free(mt_trigger *t)
{
    free(t->first);
    free(t->disj);
    free(t->untriggered);
    memset(t, 0, sizeof(*t));
}

/* Literal ids one of which `at` needs, into out (up to cap); the count, or -1 when none can be
 * told (or too many). `score` rates the set: longer shortest literal, then fewer literals. */
static inline int64_t mt_trigger_of(const mt_formula *f, const mt_litlist *lits, uint32_t at, uint32_t *out,
                                    uint32_t cap)
{
    const mt_fnode *nd = &f->node[at];
    if (nd->op == MT_F_LIT) {
        if (cap < 1)
            return -1;
        out[0] = nd->a;
        return 1;
    }
    if (nd->op == MT_F_OR) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < nd->n; i++) {
            int64_t k = mt_trigger_of(f, lits, f->kid[nd->a + i], out + n, cap - n);
            if (k < 0)
                return -1;
            n += (uint32_t)k;
        }
        return n;
    }
    if (nd->op == MT_F_AND) {
        int64_t best = -1;
        uint32_t best_min = 0;
        uint32_t tmp[256];
        for (uint32_t i = 0; i < nd->n; i++) {
            int64_t k = mt_trigger_of(f, lits, f->kid[nd->a + i], tmp, cap < 256 ? cap : 256);
            if (k <= 0)
                continue;
            uint32_t shortest = 0xFFFFFFFFu;
            for (int64_t j = 0; j < k; j++)
                if (lits->len[tmp[j]] < shortest)
                    shortest = lits->len[tmp[j]];
            if (best < 0 || shortest > best_min || (shortest == best_min && k < best)) {
                best = k;
                best_min = shortest;
                memcpy(out, tmp, (size_t)k * sizeof(uint32_t));
            }
        }
        return best;
    }
    return -1;
}

/* The disjuncts of `at` (nested ORs flattened) into out (room for cap); the new count, or
 * 0xFFFFFFFF when they do not fit. */
static inline uint32_t mt_disjuncts(const mt_formula *f, uint32_t at, uint32_t *out, uint32_t n, uint32_t cap)
{
    const mt_fnode *nd = &f->node[at];
    if (nd->op != MT_F_OR) {
        if (n >= cap)
            return 0xFFFFFFFFu;
        out[n] = at;
        return n + 1;
    }
    for (uint32_t i = 0; i < nd->n && n != 0xFFFFFFFFu; i++)
        n = mt_disjuncts(f, f->kid[nd->a + i], out, n, cap);
    return n;
}

/* Builds the trigger index of the formula `root`; 0, or -1 out of memory. */
static inline int mt_trigger_build(mt_trigger *t, const mt_formula *f, const mt_litlist *lits, uint32_t root)
{
    memset(t, 0, sizeof(*t));
    uint32_t room = f->nkid + 1;   /* formulas are trees: every disjunct is a kid, or the root */
    uint32_t *all = malloc(sizeof(uint32_t) * room);
    if (!all)
        return -1;
    uint32_t nd = mt_disjuncts(f, root, all, 0, room);
    if (nd == 0xFFFFFFFFu) {
        free(all);
        return -1;
    }
    uint32_t *counts = calloc(lits->n + 1, sizeof(uint32_t));
    uint32_t *tmp = malloc(sizeof(uint32_t) * 1024);
    /* every (literal, disjunct) pair: at most 1024 literals per disjunct */
    uint32_t pairs_cap = 1024, npairs = 0;
    uint32_t *pair_lit = malloc(sizeof(uint32_t) * pairs_cap), *pair_disj = malloc(sizeof(uint32_t) * pairs_cap);
    t->untriggered = malloc(sizeof(uint32_t) * (nd ? nd : 1));
    t->first = calloc(lits->n + 1, sizeof(uint32_t));
    int ok = counts && tmp && pair_lit && pair_disj && t->untriggered && t->first;
    for (uint32_t d = 0; ok && d < nd; d++) {
        uint32_t node = all[d];
        int64_t k = mt_trigger_of(f, lits, node, tmp, 1024);
        if (k <= 0) {
            t->untriggered[t->n_untriggered++] = node;
            continue;
        }
        for (int64_t j = 0; j < k && ok; j++) {
            if (npairs == pairs_cap) {
                pairs_cap *= 2;
                uint32_t *a = realloc(pair_lit, sizeof(uint32_t) * pairs_cap);
                if (a)
                    pair_lit = a;
                uint32_t *b = realloc(pair_disj, sizeof(uint32_t) * pairs_cap);
                if (b)
                    pair_disj = b;
                ok = a && b;
                if (!ok)
                    break;
            }
            pair_lit[npairs] = tmp[j];
            pair_disj[npairs++] = node;
            counts[tmp[j]]++;
        }
    }
    if (ok) {
        t->disj = malloc(sizeof(uint32_t) * (npairs ? npairs : 1));
        ok = t->disj != NULL;
    }
    if (ok) {
        uint32_t at = 0;
        for (uint32_t i = 0; i < lits->n; i++) {
            t->first[i] = at;
            at += counts[i];
            counts[i] = 0;
        }
        t->first[lits->n] = at;
        for (uint32_t p = 0; p < npairs; p++) {
            uint32_t id = pair_lit[p];
            t->disj[t->first[id] + counts[id]++] = pair_disj[p];
        }
        t->n_lits = lits->n;
    }
    free(all);
    free(counts);
    free(tmp);
    free(pair_lit);
    free(pair_disj);
    return ok ? 0 : -1;
}

/* The formula's value for the literals in `seen` (words: its length in 64-bit words). */
static inline int mt_trigger_eval(const mt_trigger *t, const mt_formula *f, const uint64_t *seen, uint32_t words)
{
    for (uint32_t i = 0; i < t->n_untriggered; i++)
        if (mt_formula_eval(f, t->untriggered[i], seen))
            return 1;
    for (uint32_t w = 0; w < words; w++) {
        uint64_t bits = seen[w];
        while (bits) {
            uint32_t id = w * 64 + (uint32_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (id >= t->n_lits)
                return 0;
            for (uint32_t k = t->first[id]; k < t->first[id + 1]; k++)
                if (mt_formula_eval(f, t->disj[k], seen))
                    return 1;
        }
    }
    return 0;
}

/* ---- the pattern's syntax tree (in an arena, freed after the analysis) ------------------------ */

typedef struct rx_block {
    struct rx_block *next;
    size_t used, size;
    unsigned char data[];
} rx_block;

typedef struct {
    rx_block *head;
    int oom;
} rx_arena;

static inline void *rx_alloc(rx_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->used + n > a->head->size) {
        size_t size = n > 65536 ? n : 65536;
        rx_block *b = malloc(sizeof(rx_block) + size);
        if (!b) {
            a->oom = 1;
            return NULL;
        }
        b->next = a->head;
        b->used = 0;
        b->size = size;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

static inline void rx_arena_free(rx_arena *a)
{
    while (a->head) {
        rx_block *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

enum { RX_SET, RX_ANY, RX_EMPTY, RX_CAT, RX_ALT, RX_REP };

typedef struct rx_node {
    int kind;
    uint8_t set[32];            /* RX_SET: folded bytes */
    int min, max;               /* RX_REP; max -1 = no limit */
    struct rx_node **kid;
    int nkid, capkid;
} rx_node;

typedef struct {
    const uint8_t *p;
    size_t n, i;
    int fold, fail, depth;
    rx_arena *arena;
} rx_parser;

static inline rx_node *rx_new(rx_parser *ps, int kind)
{
    rx_node *nd = rx_alloc(ps->arena, sizeof(rx_node));
    if (!nd) {
        ps->fail = 1;
        return NULL;
    }
    nd->kind = kind;
    return nd;
}

static inline void rx_add_kid(rx_parser *ps, rx_node *parent, rx_node *kid)
{
    if (parent->nkid == parent->capkid) {
        int cap = parent->capkid ? parent->capkid * 2 : 8;
        rx_node **kids = rx_alloc(ps->arena, cap * sizeof(rx_node *));
        if (!kids) {
            ps->fail = 1;
            return;
        }
        if (parent->nkid)
            memcpy(kids, parent->kid, parent->nkid * sizeof(rx_node *));
        parent->kid = kids;
        parent->capkid = cap;
    }
    parent->kid[parent->nkid++] = kid;
}

static inline void rx_set_add(rx_node *nd, int fold, uint32_t c)
{
    uint8_t f = mt_fold_byte(fold, (uint8_t)c);
    nd->set[f >> 3] |= (uint8_t)(1u << (f & 7));
}

static inline int rx_hex(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* `count` hex digits at the cursor -> value, or -1. */
static inline int64_t rx_hexn(rx_parser *ps, int count)
{
    int64_t v = 0;
    for (int k = 0; k < count; k++) {
        if (ps->i >= ps->n || rx_hex(ps->p[ps->i]) < 0)
            return -1;
        v = v * 16 + rx_hex(ps->p[ps->i++]);
    }
    return v;
}

/* A UTF-8 character beyond ASCII: skip its continuation bytes. */
static inline void rx_skip_utf8(rx_parser *ps)
{
    while (ps->i < ps->n && (ps->p[ps->i] & 0xC0) == 0x80)
        ps->i++;
}

/* Character escapes shared by both contexts, after the backslash and the letter `e` (consumed).
 * Returns the code point (>= 0x80: not ASCII), or -1 for syntax this analysis does not know. */
static inline int64_t rx_char_escape(rx_parser *ps, uint8_t e)
{
    switch (e) {
    case 'a': return 7;
    case 'f': return 12;
    case 'n': return 10;
    case 'r': return 13;
    case 't': return 9;
    case 'v': return 11;
    case 'x': return rx_hexn(ps, 2);
    case 'u': return rx_hexn(ps, 4);
    case 'U': return rx_hexn(ps, 8);
    case 'N':
        while (ps->i < ps->n && ps->p[ps->i] != '}')
            ps->i++;
        if (ps->i >= ps->n)
            return -1;
        ps->i++;
        return 0x100;                         /* a named character: not ASCII, as far as we care */
    default:
        return -1;
    }
}

/* Adds \d \s \w (and says "big" for \D \S \W) to a class; 1 if `e` was a category letter. */
static inline int rx_category(rx_node *nd, int fold, uint8_t e, int *big)
{
    switch (e) {
    case 'd':
        for (uint32_t c = '0'; c <= '9'; c++)
            rx_set_add(nd, fold, c);
        return 1;
    case 's':                                  /* str patterns: ASCII whitespace incl. \x1c-\x1f */
        for (uint32_t c = 9; c <= 13; c++)
            rx_set_add(nd, fold, c);
        for (uint32_t c = 28; c <= 32; c++)
            rx_set_add(nd, fold, c);
        *big = 1;                              /* ... and non-ASCII spaces */
        return 1;
    case 'w': case 'D': case 'S': case 'W':
        *big = 1;
        return 1;
    default:
        return 0;
    }
}

static inline int rx_set_count(const rx_node *nd)
{
    int k = 0;
    for (int b = 0; b < 32; b++)
        k += __builtin_popcount(nd->set[b]);
    return k;
}

static rx_node *rx_alt(rx_parser *ps);

/* One member of a class: a code point (>= 0 ; >= 0x80 non-ASCII), -2 for a category (added to
 * nd), -1 on unknown syntax. */
static inline int64_t rx_class_item(rx_parser *ps, rx_node *nd, int *big)
{
    uint8_t c = ps->p[ps->i++];
    if (c >= 0x80) {
        rx_skip_utf8(ps);
        return 0x100;
    }
    if (c != '\\')
        return c;
    if (ps->i >= ps->n)
        return -1;
    uint8_t e = ps->p[ps->i++];
    if (rx_category(nd, ps->fold, e, big))
        return -2;
    if (e == 'b')
        return 8;                              /* backspace inside a class */
    if (e >= '0' && e <= '7') {                /* octal, up to three digits */
        int64_t v = e - '0';
        for (int k = 0; k < 2 && ps->i < ps->n && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '7'; k++)
            v = v * 8 + (ps->p[ps->i++] - '0');
        return v;
    }
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
        return rx_char_escape(ps, e);
    return e;
}

static inline rx_node *rx_class(rx_parser *ps)
{
    rx_node *nd = rx_new(ps, RX_SET);
    if (!nd)
        return NULL;
    int negate = 0, big = 0, first = 1;
    if (ps->i < ps->n && ps->p[ps->i] == '^') {
        negate = 1;
        ps->i++;
    }
    for (;;) {
        if (ps->i >= ps->n) {
            ps->fail = 1;
            return NULL;
        }
        if (ps->p[ps->i] == ']' && !first) {
            ps->i++;
            break;
        }
        first = 0;
        int64_t lo = rx_class_item(ps, nd, &big);
        if (lo == -1) {
            ps->fail = 1;
            return NULL;
        }
        if (lo == -2)
            continue;
        if (ps->i + 1 < ps->n && ps->p[ps->i] == '-' && ps->p[ps->i + 1] != ']') {
            ps->i++;
            int64_t hi = rx_class_item(ps, nd, &big);
            if (hi < 0 || hi < lo) {
                ps->fail = 1;
                return NULL;
            }
            if (hi >= 0x80)
                big = 1;
            for (int64_t c = lo; c <= hi && c < 0x80; c++)
                rx_set_add(nd, ps->fold, (uint32_t)c);
            continue;
        }
        if (lo >= 0x80)
            big = 1;                           /* a non-ASCII member may fold to ASCII (re.I) */
        else
            rx_set_add(nd, ps->fold, (uint32_t)lo);
    }
    if (negate || big || rx_set_count(nd) > RX_MAX_CLASS)
        nd->kind = RX_ANY;
    return nd;
}

/* After "(?": the kind of group. Returns the node (the group's content, or EMPTY). */
static inline rx_node *rx_group(rx_parser *ps)
{
    int zero_width = 0;
    if (ps->i < ps->n && ps->p[ps->i] == '?') {
        ps->i++;
        if (ps->i >= ps->n) {
            ps->fail = 1;
            return NULL;
        }
        uint8_t c = ps->p[ps->i];
        if (c == ':' || c == '>') {
            ps->i++;
        } else if (c == '=' || c == '!') {
            ps->i++;
            zero_width = 1;
        } else if (c == '<' && ps->i + 1 < ps->n && (ps->p[ps->i + 1] == '=' || ps->p[ps->i + 1] == '!')) {
            ps->i += 2;
            zero_width = 1;
        } else if (c == 'P' && ps->i + 1 < ps->n && ps->p[ps->i + 1] == '<') {
            while (ps->i < ps->n && ps->p[ps->i] != '>')
                ps->i++;
            ps->i++;
        } else if (c == '#') {
            while (ps->i < ps->n && ps->p[ps->i] != ')')
                ps->i++;
            if (ps->i >= ps->n) {
                ps->fail = 1;
                return NULL;
            }
            ps->i++;
            return rx_new(ps, RX_EMPTY);
        } else {
            /* inline flags: (?aiLmsu-imsx) alone or (?flags:...) scoped; verbose mode changes the
             * syntax itself, and everything else ((?P=name), conditionals) is not analysed */
            while (ps->i < ps->n && strchr("aiLmsux-", ps->p[ps->i]) && ps->p[ps->i]) {
                if (ps->p[ps->i] == 'x') {
                    ps->fail = 1;
                    return NULL;
                }
                ps->i++;
            }
            if (ps->i < ps->n && ps->p[ps->i] == ')') {
                ps->i++;
                return rx_new(ps, RX_EMPTY);
            }
            if (ps->i < ps->n && ps->p[ps->i] == ':') {
                ps->i++;
            } else {
                ps->fail = 1;
                return NULL;
            }
        }
    }
    rx_node *inner = rx_alt(ps);
    if (ps->fail)
        return NULL;
    if (ps->i >= ps->n || ps->p[ps->i] != ')') {
        ps->fail = 1;
        return NULL;
    }
    ps->i++;
    return zero_width ? rx_new(ps, RX_EMPTY) : inner;
}

static inline rx_node *rx_atom(rx_parser *ps)
{
    uint8_t c = ps->p[ps->i++];
    rx_node *nd;
    switch (c) {
    case '(':
        return rx_group(ps);
    case '[':
        return rx_class(ps);
    case '.':
        return rx_new(ps, RX_ANY);
    case '^': case '$':
        return rx_new(ps, RX_EMPTY);
    case '*': case '+': case '?':
        ps->fail = 1;                          /* nothing to repeat */
        return NULL;
    case '\\': {
        if (ps->i >= ps->n) {
            ps->fail = 1;
            return NULL;
        }
        uint8_t e = ps->p[ps->i++];
        if (e == 'A' || e == 'Z' || e == 'b' || e == 'B')
            return rx_new(ps, RX_EMPTY);
        nd = rx_new(ps, RX_SET);
        if (!nd)
            return NULL;
        int big = 0;
        if (rx_category(nd, ps->fold, e, &big)) {
            if (big)
                nd->kind = RX_ANY;
            return nd;
        }
        int64_t v;
        if (e == '0') {
            v = 0;
            for (int k = 0; k < 2 && ps->i < ps->n && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '7'; k++)
                v = v * 8 + (ps->p[ps->i++] - '0');
        } else if (e >= '1' && e <= '9') {
            /* a group reference, unless three octal digits */
            if (ps->i + 1 < ps->n && e <= '7' && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '7' &&
                ps->p[ps->i + 1] >= '0' && ps->p[ps->i + 1] <= '7') {
                v = (e - '0') * 64 + (ps->p[ps->i] - '0') * 8 + (ps->p[ps->i + 1] - '0');
                ps->i += 2;
            } else {
                if (ps->i < ps->n && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '9')
                    ps->i++;
                nd->kind = RX_ANY;
                return nd;
            }
        } else if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
            v = rx_char_escape(ps, e);
            if (v < 0) {
                ps->fail = 1;
                return NULL;
            }
        } else if (e >= 0x80) {
            rx_skip_utf8(ps);
            v = 0x100;
        } else {
            v = e;
        }
        if (v >= 0x80)
            nd->kind = RX_ANY;
        else
            rx_set_add(nd, ps->fold, (uint32_t)v);
        return nd;
    }
    default:
        nd = rx_new(ps, RX_SET);
        if (!nd)
            return NULL;
        if (c >= 0x80) {
            rx_skip_utf8(ps);
            nd->kind = RX_ANY;
        } else {
            rx_set_add(nd, ps->fold, c);
        }
        return nd;
    }
}

/* A quantifier at the cursor: sets min/max and returns 1 (consumed), or 0 (none; a "{" that is
 * not a valid repeat is a literal, as in Python). */
static inline int rx_quantifier(rx_parser *ps, int *min, int *max)
{
    if (ps->i >= ps->n)
        return 0;
    uint8_t c = ps->p[ps->i];
    if (c == '*' || c == '+' || c == '?') {
        ps->i++;
        *min = c == '+';
        *max = c == '?' ? 1 : -1;
    } else if (c == '{') {
        size_t at = ps->i + 1;
        int64_t lo = -1, hi = -1;
        int comma = 0;
        if (at < ps->n && ps->p[at] == '}')
            return 0;
        while (at < ps->n && ps->p[at] >= '0' && ps->p[at] <= '9') {
            lo = (lo < 0 ? 0 : lo) * 10 + (ps->p[at++] - '0');
            if (lo > 1000000)
                return 0;
        }
        if (at < ps->n && ps->p[at] == ',') {
            comma = 1;
            at++;
            while (at < ps->n && ps->p[at] >= '0' && ps->p[at] <= '9') {
                hi = (hi < 0 ? 0 : hi) * 10 + (ps->p[at++] - '0');
                if (hi > 1000000)
                    return 0;
            }
        } else {
            hi = lo;
        }
        if (at >= ps->n || ps->p[at] != '}')
            return 0;
        ps->i = at + 1;
        *min = lo < 0 ? 0 : (int)lo;
        *max = comma && hi < 0 ? -1 : (int)hi;
        if (*max < 0 && !comma)
            *max = *min;
    } else {
        return 0;
    }
    if (ps->i < ps->n && (ps->p[ps->i] == '?' || ps->p[ps->i] == '+'))
        ps->i++;                               /* lazy or possessive: the same strings */
    return 1;
}

static inline rx_node *rx_cat(rx_parser *ps)
{
    rx_node *cat = rx_new(ps, RX_CAT);
    if (!cat)
        return NULL;
    while (ps->i < ps->n && ps->p[ps->i] != '|' && ps->p[ps->i] != ')') {
        rx_node *atom = rx_atom(ps);
        if (ps->fail)
            return NULL;
        int min, max;
        while (rx_quantifier(ps, &min, &max)) {
            rx_node *rep = rx_new(ps, RX_REP);
            if (!rep)
                return NULL;
            rep->min = min;
            rep->max = max;
            rx_add_kid(ps, rep, atom);
            atom = rep;
        }
        rx_add_kid(ps, cat, atom);
        if (ps->fail)
            return NULL;
    }
    return cat;
}

static rx_node *rx_alt(rx_parser *ps)
{
    if (++ps->depth > RX_MAX_DEPTH) {
        ps->fail = 1;
        return NULL;
    }
    rx_node *alt = rx_new(ps, RX_ALT);
    if (!alt)
        return NULL;
    for (;;) {
        rx_node *cat = rx_cat(ps);
        if (ps->fail)
            return NULL;
        rx_add_kid(ps, alt, cat);
        if (ps->i < ps->n && ps->p[ps->i] == '|') {
            ps->i++;
            continue;
        }
        break;
    }
    ps->depth--;
    return alt;
}

/* ---- the analysis -------------------------------------------------------------------------- */

typedef struct {
    int n;
    uint8_t **s;
    uint8_t *len;
} rx_strs;

typedef struct {
    rx_strs *exact;             /* every string the piece can match, or NULL: too many */
    int64_t f;                  /* otherwise: what a match of it requires (a formula node) */
} rx_info;

typedef struct {
    rx_arena *arena;
    mt_formula *f;
    mt_litlist *lits;
    uint8_t flag;
    int fail;
} rx_ctx;

static inline rx_strs *rx_strs_new(rx_ctx *cx, int cap)
{
    rx_strs *s = rx_alloc(cx->arena, sizeof(rx_strs));
    if (s) {
        s->s = rx_alloc(cx->arena, (cap ? cap : 1) * sizeof(uint8_t *));
        s->len = rx_alloc(cx->arena, cap ? cap : 1);
    }
    if (!s || !s->s || !s->len) {
        cx->fail = 1;
        return NULL;
    }
    return s;
}

static inline void rx_strs_put(rx_ctx *cx, rx_strs *s, const uint8_t *a, int an, const uint8_t *b, int bn)
{
    for (int k = 0; k < s->n; k++)
        if (s->len[k] == an + bn && memcmp(s->s[k], a, an) == 0 && memcmp(s->s[k] + an, b, bn) == 0)
            return;
    uint8_t *out = rx_alloc(cx->arena, an + bn + 1);
    if (!out) {
        cx->fail = 1;
        return;
    }
    memcpy(out, a, an);
    memcpy(out + an, b, bn);
    s->s[s->n] = out;
    s->len[s->n++] = (uint8_t)(an + bn);
}

static inline int rx_maxlen(const rx_strs *s)
{
    int m = 0;
    for (int k = 0; k < s->n; k++)
        if (s->len[k] > m)
            m = s->len[k];
    return m;
}

static inline int rx_product_ok(const rx_strs *a, const rx_strs *b)
{
    return (int64_t)a->n * b->n <= RX_MAX_STRS && rx_maxlen(a) + rx_maxlen(b) <= RX_MAX_LEN;
}

static inline rx_strs *rx_product(rx_ctx *cx, const rx_strs *a, const rx_strs *b)
{
    rx_strs *out = rx_strs_new(cx, a->n * b->n);
    if (!out)
        return NULL;
    for (int i = 0; i < a->n; i++)
        for (int j = 0; j < b->n; j++)
            rx_strs_put(cx, out, a->s[i], a->len[i], b->s[j], b->len[j]);
    return out;
}

static inline rx_strs *rx_empty_strs(rx_ctx *cx)
{
    rx_strs *s = rx_strs_new(cx, 1);
    if (s)
        rx_strs_put(cx, s, (const uint8_t *)"", 0, (const uint8_t *)"", 0);
    return s;
}

static inline int64_t rx_true(rx_ctx *cx)
{
    int64_t t = mt_formula_node(cx->f, MT_F_TRUE, 0, 0);
    if (t < 0)
        cx->fail = 1;
    return t;
}

/* "one of these strings occurs": an OR of literals (TRUE when "" is among them). A string that
 * contains another of the set adds nothing and is left out. */
static inline int rx_alnum(uint8_t c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

/* A set some string of which almost any text holds (a single letter or digit, or nothing but
 * one- and two-letter words like [0-7]{2}) filters nothing: it is left out of the formula
 * (TRUE), which keeps such literals out of the search too. */
static inline int rx_weak(const rx_strs *s)
{
    int all_short = 1;
    for (int k = 0; k < s->n; k++) {
        if (s->len[k] == 0 || (s->len[k] == 1 && rx_alnum(s->s[k][0])))
            return 1;
        if (s->len[k] > 2 || !rx_alnum(s->s[k][0]) || (s->len[k] == 2 && !rx_alnum(s->s[k][1])))
            all_short = 0;
    }
    return all_short;
}

static inline int64_t rx_or_strs(rx_ctx *cx, const rx_strs *s)
{
    uint32_t kids[RX_MAX_STRS];
    uint32_t nk = 0;
    if (rx_weak(s))
        return rx_true(cx);
    for (int k = 0; k < s->n; k++) {
        int redundant = 0;
        for (int j = 0; j < s->n && !redundant; j++) {
            if (j == k || s->len[j] > s->len[k] || (s->len[j] == s->len[k] && j > k))
                continue;
            if (memmem(s->s[k], s->len[k], s->s[j], s->len[j]))
                redundant = 1;
        }
        if (redundant)
            continue;
        int64_t id = mt_litlist_add(cx->lits, s->s[k], s->len[k], cx->flag);
        int64_t nd = id < 0 ? -1 : mt_formula_node(cx->f, MT_F_LIT, (uint32_t)id, 0);
        if (nd < 0) {
            cx->fail = 1;
            return -1;
        }
        kids[nk++] = (uint32_t)nd;
    }
    int64_t r = mt_formula_join(cx->f, MT_F_OR, kids, nk);
    if (r < 0)
        cx->fail = 1;
    return r;
}

static inline int64_t rx_formula_of(rx_ctx *cx, rx_info in)
{
    return in.exact ? rx_or_strs(cx, in.exact) : in.f;
}

static rx_info rx_info_of(rx_ctx *cx, const rx_node *nd)
{
    rx_info out = {NULL, 0};
    if (cx->fail)
        return out;
    switch (nd->kind) {
    case RX_SET: {
        rx_strs *s = rx_strs_new(cx, RX_MAX_CLASS);
        if (!s)
            return out;
        for (int c = 0; c < 256; c++) {
            if (nd->set[c >> 3] & (1u << (c & 7))) {
                uint8_t ch = (uint8_t)c;
                rx_strs_put(cx, s, &ch, 1, (const uint8_t *)"", 0);
            }
        }
        out.exact = s;
        return out;
    }
    case RX_ANY:
        out.f = rx_true(cx);
        return out;
    case RX_EMPTY:
        out.exact = rx_empty_strs(cx);
        return out;
    case RX_CAT: {
        rx_strs *run = rx_empty_strs(cx);
        int broke = 0;
        uint32_t *clauses = rx_alloc(cx->arena, (3 * nd->nkid + 1) * sizeof(uint32_t));
        uint32_t nc = 0;
        if (!run || !clauses) {
            cx->fail = 1;
            return out;
        }
        for (int k = 0; k < nd->nkid && !cx->fail; k++) {
            rx_info in = rx_info_of(cx, nd->kid[k]);
            if (cx->fail)
                return out;
            if (in.exact && rx_product_ok(run, in.exact)) {
                run = rx_product(cx, run, in.exact);
                continue;
            }
            broke = 1;
            const rx_node *kid = nd->kid[k];
            if (!in.exact && kid->kind == RX_REP && kid->min >= 1) {
                /* x{m,}: its first copy follows what came before, its last copy precedes what
                 * comes after ("or" + [ ]+ + "1": "or " and " 1") */
                rx_info each = rx_info_of(cx, kid->kid[0]);
                if (cx->fail)
                    return out;
                if (each.exact) {
                    if (rx_product_ok(run, each.exact)) {
                        run = rx_product(cx, run, each.exact);
                    } else {
                        int64_t c = rx_or_strs(cx, run);
                        if (c < 0)
                            return out;
                        clauses[nc++] = (uint32_t)c;
                        run = each.exact;
                    }
                    int64_t c = rx_or_strs(cx, run);
                    if (c < 0 || !run)
                        return out;
                    clauses[nc++] = (uint32_t)c;
                    clauses[nc++] = (uint32_t)in.f;
                    run = each.exact;
                    continue;
                }
            }
            int64_t c = rx_or_strs(cx, run);
            if (c < 0)
                return out;
            clauses[nc++] = (uint32_t)c;
            if (in.exact) {
                run = in.exact;
            } else {
                clauses[nc++] = (uint32_t)in.f;
                run = rx_empty_strs(cx);
            }
        }
        if (cx->fail)
            return out;
        if (!broke) {
            out.exact = run;
            return out;
        }
        int64_t c = rx_or_strs(cx, run);
        if (c < 0)
            return out;
        clauses[nc++] = (uint32_t)c;
        out.f = mt_formula_join(cx->f, MT_F_AND, clauses, nc);
        if (out.f < 0)
            cx->fail = 1;
        return out;
    }
    case RX_ALT: {
        rx_info *ins = rx_alloc(cx->arena, (nd->nkid ? nd->nkid : 1) * sizeof(rx_info));
        if (!ins) {
            cx->fail = 1;
            return out;
        }
        int all_exact = 1, total = 0;
        for (int k = 0; k < nd->nkid; k++) {
            ins[k] = rx_info_of(cx, nd->kid[k]);
            if (cx->fail)
                return out;
            if (ins[k].exact)
                total += ins[k].exact->n;
            else
                all_exact = 0;
        }
        if (all_exact && total <= RX_MAX_STRS) {
            rx_strs *u = rx_strs_new(cx, total);
            if (!u)
                return out;
            for (int k = 0; k < nd->nkid; k++)
                for (int j = 0; j < ins[k].exact->n; j++)
                    rx_strs_put(cx, u, ins[k].exact->s[j], ins[k].exact->len[j], (const uint8_t *)"", 0);
            out.exact = u;
            return out;
        }
        uint32_t *kids = rx_alloc(cx->arena, (nd->nkid ? nd->nkid : 1) * sizeof(uint32_t));
        if (!kids) {
            cx->fail = 1;
            return out;
        }
        for (int k = 0; k < nd->nkid; k++) {
            int64_t c = rx_formula_of(cx, ins[k]);
            if (c < 0)
                return out;
            kids[k] = (uint32_t)c;
        }
        out.f = mt_formula_join(cx->f, MT_F_OR, kids, (uint32_t)nd->nkid);
        if (out.f < 0)
            cx->fail = 1;
        return out;
    }
    case RX_REP: {
        rx_info in = rx_info_of(cx, nd->kid[0]);
        if (cx->fail)
            return out;
        if (nd->min == 0) {
            if (nd->max == 1 && in.exact && in.exact->n < RX_MAX_STRS) {
                rx_strs *u = rx_strs_new(cx, in.exact->n + 1);
                if (!u)
                    return out;
                rx_strs_put(cx, u, (const uint8_t *)"", 0, (const uint8_t *)"", 0);
                for (int j = 0; j < in.exact->n; j++)
                    rx_strs_put(cx, u, in.exact->s[j], in.exact->len[j], (const uint8_t *)"", 0);
                out.exact = u;
            } else {
                out.f = rx_true(cx);
            }
            return out;
        }
        if (!in.exact) {
            out.f = in.f;                      /* at least one repeat: what it requires */
            return out;
        }
        /* min >= 1 repeats are adjacent: some string of E^k (k <= min) occurs */
        rx_strs *p = in.exact;
        int k = 1;
        while (k < nd->min && rx_product_ok(p, in.exact)) {
            p = rx_product(cx, p, in.exact);
            if (!p)
                return out;
            k++;
        }
        if (k == nd->min && nd->max == nd->min)
            out.exact = p;
        else
            out.f = rx_or_strs(cx, p);
        return out;
    }
    }
    cx->fail = 1;
    return out;
}

/* The formula for one pattern (its node index in f; a TRUE node when nothing can be told), adding
 * its literals to `lits` with `flag`. -1 when out of memory. */
static inline int64_t mt_regex_formula(const uint8_t *pattern, size_t n, int fold, mt_formula *f, mt_litlist *lits,
                                       uint8_t flag)
{
    rx_arena arena = {NULL, 0};
    rx_parser ps = {pattern, n, 0, fold, 0, 0, &arena};
    rx_node *root = rx_alt(&ps);
    int64_t result;
    if (arena.oom) {
        result = -1;
    } else if (ps.fail || !root || ps.i != n) {
        result = mt_formula_node(f, MT_F_TRUE, 0, 0);   /* syntax we do not know: no requirement */
    } else {
        rx_ctx cx = {&arena, f, lits, flag, 0};
        rx_info in = rx_info_of(&cx, root);
        result = cx.fail ? -1 : rx_formula_of(&cx, in);
        if (cx.fail || arena.oom)
            result = -1;
    }
    rx_arena_free(&arena);
    return result;
}

#endif /* MALTRAIL_RELITS_H */
