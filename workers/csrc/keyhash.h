/*
 * keyhash.h: a keyed 64-bit hash for the worker's heuristic state (workers/csrc/window.h,
 * workers/csrc/exhaustion.h).
 *
 * The keys and values it hashes come from traffic (addresses, DNS names, request paths), so the
 * hash is keyed with 128 random bits drawn when the state is created: without them nobody can
 * aim packets at one hash chain, nor pick two names that share a fingerprint. It is a
 * multiply-and-fold construction (128-bit product, the halves XORed), not a cryptographic MAC:
 * enough for hash tables and for 64-bit fingerprints of stored values.
 *
 * Must not know what it hashes.
 */
#ifndef MALTRAIL_KEYHASH_H
#define MALTRAIL_KEYHASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

typedef struct {
    uint64_t k0, k1;
} mt_hkey;

static inline uint64_t mt_fold_mul(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t mt_load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t mt_keyed_hash(const mt_hkey *k, const void *data, size_t n)
{
    const uint8_t *p = data;
    /* two independent lanes of 16 bytes, so the multiplications overlap */
    uint64_t h1 = k->k0 ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull), h2 = k->k1 ^ 0x2D358DCCAA6C78A5ull;
    while (n > 32) {
        h1 = mt_fold_mul(mt_load64(p) ^ k->k1 ^ h1, mt_load64(p + 8) ^ k->k0 ^ 0xA0761D6478BD642Full);
        h2 = mt_fold_mul(mt_load64(p + 16) ^ k->k0 ^ h2, mt_load64(p + 24) ^ k->k1 ^ 0xE7037ED1A0B428DBull);
        p += 32;
        n -= 32;
    }
    /* the last 0..32 bytes, read as overlapping words: for a given length every byte is in them */
    uint64_t a = 0, b = 0, c = 0, d = 0;
    if (n >= 16) {
        a = mt_load64(p);
        b = mt_load64(p + 8);
        c = mt_load64(p + n - 16);
        d = mt_load64(p + n - 8);
    } else if (n >= 8) {
        a = mt_load64(p);
        b = mt_load64(p + n - 8);
    } else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, p, 4);
        memcpy(&y, p + n - 4, 4);
        a = x;
        b = y;
    } else if (n) {
        a = (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16;
    }
    h1 = mt_fold_mul(a ^ k->k1 ^ h1, b ^ k->k0 ^ 0xA0761D6478BD642Full);
    h2 = mt_fold_mul(c ^ k->k0 ^ h2, d ^ k->k1 ^ 0xE7037ED1A0B428DBull);
    return mt_fold_mul(h1 ^ 0x8EBC6AF09C88C6E3ull, h2 ^ 0x589965CC75374CC3ull);
}

/* A fresh random key (getrandom; the clock and an address only if the kernel refuses). */
static inline void mt_hkey_random(mt_hkey *k)
{
    uint64_t buf[2];
    if (getrandom(buf, sizeof(buf), GRND_NONBLOCK) != (ssize_t)sizeof(buf)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        buf[0] = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)k;
        buf[1] = (uint64_t)ts.tv_sec * 0xC2B2AE3D27D4EB4Full ^ (uint64_t)(uintptr_t)&ts;
    }
    k->k0 = buf[0] | 1;
    k->k1 = buf[1] | 1;
}

#endif /* MALTRAIL_KEYHASH_H */
