/* Shared helpers of libqnet (not installed). */
#ifndef QNET_INTERNAL_H
#define QNET_INTERNAL_H

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qnet.h"

/* Library-internal functions stay out of libqnet.so's dynamic symbol table. */
#if defined(__GNUC__)
#define QNET_INTERNAL __attribute__((visibility("hidden")))
#else
#define QNET_INTERNAL
#endif

/* One piece of an HKDF info string (the info is the concatenation of the parts). */
typedef struct qnet_part {
    const uint8_t *p;
    size_t n;
} qnet_part;

/* HKDF-Extract(salt, ikm) -> prk (32 bytes). */
QNET_INTERNAL void qnet_hkdf_extract(uint8_t prk[32], const uint8_t *salt, size_t salt_len, const uint8_t *ikm,
                       size_t ikm_len);
/* HKDF-Expand(prk, info parts, out_len); out_len <= 255 * 32 (checked by callers). */
QNET_INTERNAL void qnet_hkdf_expand(uint8_t *out, size_t out_len, const uint8_t *prk,
                                    size_t prk_len, const qnet_part *info, size_t n_parts);

static inline void qnet_xor(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dst[i] = (uint8_t)(a[i] ^ b[i]);
    }
}

static inline void qnet_put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t qnet_get_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void qnet_put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t qnet_get_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* counter as 64-bit little-endian || 4 zero bytes (cells.md §3, htx.md §3). */
static inline void qnet_counter_nonce(uint8_t nonce[12], uint64_t counter) {
    for (int i = 0; i < 8; i++) {
        nonce[i] = (uint8_t)(counter >> (8 * i));
    }
    nonce[8] = nonce[9] = nonce[10] = nonce[11] = 0;
}

/* 1 if every byte of p[0:n] is zero, in time independent of the contents. */
static inline int qnet_all_zero(const uint8_t *p, size_t n) {
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc |= p[i];
    }
    return acc == 0;
}

/* X25519 that refuses an all-zero result: 0 ok, -1 small order. */
static inline int qnet_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]) {
    if (crypto_scalarmult(out, scalar, point) != 0) {
        sodium_memzero(out, 32);
        return -1;
    }
    return 0;
}

/* Fill `out` from `src` or, when src is NULL, from libsodium's generator. */
static inline void qnet_draw(uint8_t *out, const uint8_t *src, size_t n) {
    if (n == 0) {
        return;
    }
    if (src != NULL) {
        memcpy(out, src, n);
    } else {
        randombytes_buf(out, n);
    }
}

#endif
