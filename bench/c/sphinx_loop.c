/*
 * sphinx_loop: the C baseline for one Sphinx hop unwrap (spec/sphinx.md §7).
 *
 * Per packet it does the same primitive work as qnet.crypto.hopcrypto.sphinx_unwrap,
 * with libsodium only:
 *   s   = X25519(x, alpha)                                  crypto_scalarmult
 *   okm = HKDF-SHA256("qnet-sphinx-v1", s, alpha || X, 240) crypto_auth_hmacsha256_*
 *   MAC = BLAKE2b-16(okm[32:64], beta), compared to gamma   crypto_generichash, crypto_verify_16
 *   routing = (beta || 96 zero) ^ ChaCha20(okm[0:32], 576)  crypto_stream_chacha20_ietf_xor
 *   delta'  = Lioness-decrypt(okm[64:192], delta)           2x ChaCha20 XOR + 2x BLAKE2b-32 over 1480 B
 * and writes the same 2136-byte output block as the Python/Cython API:
 *   replay_tag (16) || hop_secret (32) || slot (96) || next_beta (480) || payload (1512).
 *
 * HKDF reuses HMAC states the way a tuned implementation would: the salt's keyed
 * state is built once per process and the PRK's keyed state once per packet, then
 * copied for each expand block.
 *
 * Input (file argument, or "-" for stdin), raw bytes:
 *   node_private (32) || node_public (32) || N packets of 2040 bytes.
 *
 * Usage: sphinx_loop [-n UNWRAPS | -t SECONDS] INPUT
 *
 * First one untimed pass over all N packets (warm-up and correctness check: its
 * outputs are hashed into "digest", BLAKE2b-256 of the concatenated output blocks,
 * which the caller compares with the Python reference). Then the timed loop:
 * exactly UNWRAPS unwraps (cycling over the packets), or as many as fit in SECONDS.
 * Every unwrap's MAC must verify; "failures" counts those that did not (exit code 2
 * if any). Prints one JSON object on stdout.
 */

#define _POSIX_C_SOURCE 200809L

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PACKET_LEN 2040
#define ALPHA_LEN 32
#define GAMMA_LEN 16
#define BETA_LEN 480
#define SLOT_LEN 96
#define HEADER_LEN (ALPHA_LEN + GAMMA_LEN + BETA_LEN) /* 528 */
#define PAYLOAD_LEN (PACKET_LEN - HEADER_LEN)         /* 1512 */
#define LIONESS_LEFT 32
#define LIONESS_RIGHT (PAYLOAD_LEN - LIONESS_LEFT) /* 1480 */
#define OKM_LEN 240
#define OKM_BLOCKS 8 /* ceil(240 / 32) */
#define OUT_LEN (16 + 32 + SLOT_LEN + BETA_LEN + PAYLOAD_LEN) /* 2136 */
#define CHUNK 64 /* unwraps between clock reads in -t mode */

enum { UNWRAP_OK = 0, UNWRAP_POINT = 2, UNWRAP_MAC = 3 };

static const unsigned char SALT[] = "qnet-sphinx-v1";
static const unsigned char ZERO_NONCE[crypto_stream_chacha20_ietf_NONCEBYTES] = {0};

typedef struct {
    unsigned char priv[32];
    unsigned char pub[32];
    crypto_auth_hmacsha256_state salt_state; /* HMAC keyed with SALT, before any data */
} node_key;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void xor_into(unsigned char *dst, const unsigned char *a, const unsigned char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dst[i] = a[i] ^ b[i];
    }
}

/* HKDF-SHA256 (RFC 5869): extract with the node's salt state, expand to 240 bytes. */
static void hkdf_okm(const node_key *node, const unsigned char shared[32],
                     const unsigned char alpha[ALPHA_LEN], unsigned char okm[OKM_BLOCKS * 32]) {
    crypto_auth_hmacsha256_state st = node->salt_state;
    unsigned char prk[32];
    crypto_auth_hmacsha256_update(&st, shared, 32);
    crypto_auth_hmacsha256_final(&st, prk);

    crypto_auth_hmacsha256_state prk_state;
    crypto_auth_hmacsha256_init(&prk_state, prk, sizeof prk);
    for (unsigned i = 0; i < OKM_BLOCKS; i++) {
        unsigned char counter = (unsigned char)(i + 1);
        st = prk_state;
        if (i > 0) {
            crypto_auth_hmacsha256_update(&st, okm + 32 * (i - 1), 32);
        }
        crypto_auth_hmacsha256_update(&st, alpha, ALPHA_LEN);
        crypto_auth_hmacsha256_update(&st, node->pub, 32);
        crypto_auth_hmacsha256_update(&st, &counter, 1);
        crypto_auth_hmacsha256_final(&st, okm + 32 * i);
    }
    sodium_memzero(prk, sizeof prk);
}

/* Lioness decrypt (spec/sphinx.md §5) of delta into out (both PAYLOAD_LEN bytes). */
static void lioness_decrypt(const unsigned char keys[128], const unsigned char *delta,
                            unsigned char *out) {
    const unsigned char *k1 = keys, *k2 = keys + 32, *k3 = keys + 64, *k4 = keys + 96;
    unsigned char *left = out, *right = out + LIONESS_LEFT;
    unsigned char h[32], k[32];
    memcpy(out, delta, PAYLOAD_LEN);

    crypto_generichash(h, 32, right, LIONESS_RIGHT, k4, 32);
    xor_into(left, left, h, 32);
    xor_into(k, left, k3, 32);
    crypto_stream_chacha20_ietf_xor(right, right, LIONESS_RIGHT, ZERO_NONCE, k);
    crypto_generichash(h, 32, right, LIONESS_RIGHT, k2, 32);
    xor_into(left, left, h, 32);
    xor_into(k, left, k1, 32);
    crypto_stream_chacha20_ietf_xor(right, right, LIONESS_RIGHT, ZERO_NONCE, k);
}

/* One hop unwrap: returns UNWRAP_OK and fills out[OUT_LEN], or an error code. */
static int sphinx_unwrap(const node_key *node, const unsigned char *packet, unsigned char *out) {
    const unsigned char *alpha = packet;
    const unsigned char *gamma = packet + ALPHA_LEN;
    const unsigned char *beta = packet + ALPHA_LEN + GAMMA_LEN;
    const unsigned char *delta = packet + HEADER_LEN;
    unsigned char shared[32], okm[OKM_BLOCKS * 32], mac[GAMMA_LEN];

    if (crypto_scalarmult(shared, node->priv, alpha) != 0) {
        return UNWRAP_POINT; /* all-zero shared secret */
    }
    hkdf_okm(node, shared, alpha, okm);
    crypto_generichash(mac, GAMMA_LEN, beta, BETA_LEN, okm + 32, 32);
    if (crypto_verify_16(mac, gamma) != 0) {
        return UNWRAP_MAC;
    }
    memcpy(out, okm + 192, 48); /* replay_tag || hop_secret */
    unsigned char *routing = out + 48;
    memcpy(routing, beta, BETA_LEN);
    memset(routing + BETA_LEN, 0, SLOT_LEN);
    crypto_stream_chacha20_ietf_xor(routing, routing, BETA_LEN + SLOT_LEN, ZERO_NONCE, okm);
    lioness_decrypt(okm + 64, delta, out + 48 + BETA_LEN + SLOT_LEN);
    return UNWRAP_OK;
}

static unsigned char *read_all(const char *path, size_t *len_out) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    unsigned char *buf = malloc(cap);
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) {
            break;
        }
        cap *= 2;
        unsigned char *bigger = realloc(buf, cap);
        if (bigger == NULL) {
            free(buf);
        }
        buf = bigger;
    }
    if (f != stdin) {
        fclose(f);
    }
    if (buf == NULL) {
        fprintf(stderr, "out of memory\n");
        return NULL;
    }
    *len_out = len;
    return buf;
}

static void usage(void) {
    fprintf(stderr, "usage: sphinx_loop [-n UNWRAPS | -t SECONDS] INPUT\n");
}

int main(int argc, char **argv) {
    unsigned long long unwraps = 0;
    double seconds = 2.0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            unwraps = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            seconds = strtod(argv[++i], NULL);
        } else if (path == NULL && (argv[i][0] != '-' || argv[i][1] == '\0')) {
            path = argv[i];
        } else {
            usage();
            return 64;
        }
    }
    if (path == NULL) {
        usage();
        return 64;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "sodium_init failed\n");
        return 1;
    }

    size_t len = 0;
    unsigned char *input = read_all(path, &len);
    if (input == NULL) {
        return 1;
    }
    if (len < 64 + PACKET_LEN || (len - 64) % PACKET_LEN != 0) {
        fprintf(stderr, "input must be 64 key bytes + N * %d packet bytes, got %zu\n", PACKET_LEN,
                len);
        return 1;
    }
    size_t n_packets = (len - 64) / PACKET_LEN;
    const unsigned char *packets = input + 64;

    node_key node;
    memcpy(node.priv, input, 32);
    memcpy(node.pub, input + 32, 32);
    crypto_auth_hmacsha256_init(&node.salt_state, SALT, sizeof SALT - 1);

    unsigned char out[OUT_LEN];
    unsigned long long failures = 0;
    unsigned checksum = 0;

    /* Untimed pass: warm-up, and the digest the caller checks against Python. */
    crypto_generichash_state digest_state;
    unsigned char digest[32];
    crypto_generichash_init(&digest_state, NULL, 0, sizeof digest);
    for (size_t i = 0; i < n_packets; i++) {
        if (sphinx_unwrap(&node, packets + i * PACKET_LEN, out) != UNWRAP_OK) {
            failures++;
            memset(out, 0, sizeof out);
        }
        crypto_generichash_update(&digest_state, out, sizeof out);
    }
    crypto_generichash_final(&digest_state, digest, sizeof digest);

    /* Timed loop. */
    unsigned long long done = 0;
    size_t next = 0;
    double start = now_seconds(), elapsed = 0.0;
    for (;;) {
        unsigned long long chunk = CHUNK;
        if (unwraps > 0 && unwraps - done < chunk) {
            chunk = unwraps - done;
        }
        for (unsigned long long j = 0; j < chunk; j++) {
            if (sphinx_unwrap(&node, packets + next * PACKET_LEN, out) != UNWRAP_OK) {
                failures++;
            }
            checksum = checksum * 31u + out[j % OUT_LEN];
            next = next + 1 == n_packets ? 0 : next + 1;
        }
        done += chunk;
        elapsed = now_seconds() - start;
        if (unwraps > 0 ? done >= unwraps : elapsed >= seconds) {
            break;
        }
    }

    char digest_hex[2 * sizeof digest + 1];
    sodium_bin2hex(digest_hex, sizeof digest_hex, digest, sizeof digest);
    printf("{\"packets_per_s\": %.1f, \"unwraps\": %llu, \"seconds\": %.6f, \"packets\": %zu, "
           "\"failures\": %llu, \"checksum\": %u, \"digest\": \"%s\"}\n",
           (double)done / elapsed, done, elapsed, n_packets, failures, checksum, digest_hex);
    free(input);
    return failures == 0 ? 0 : 2;
}
