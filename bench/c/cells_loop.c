/*
 * cells_loop: the C baseline for relay-cell layer crypto (spec/cells.md §3).
 *
 * Three loops over batches of BATCH cells, libsodium only:
 *   xor   pass-through layer: crypto_stream_chacha20_ietf_xor_ic over each 2040-byte
 *         body, nonce = counter (u64 LE) || 4 zero bytes, block counter 0;
 *   open  end layer: crypto_aead_chacha20poly1305_ietf_decrypt of 2040-byte bodies
 *         (2024 plaintext + 16 tag), empty associated data; every open must verify;
 *   seal  end layer: crypto_aead_chacha20poly1305_ietf_encrypt of 2024-byte plaintexts.
 * Throughput is reported as body bytes per second (2040 per cell) for all three,
 * the same unit bench/cells.py uses for the Python and Cython rows.
 *
 * Before timing, a fixed case is computed for the caller to check against the
 * Python reference: key = 00 01 .. 1f, BATCH all-zero bodies (xor) or plaintexts
 * (seal) with counters 0 .. BATCH-1; "digests" holds BLAKE2b-256 of each output.
 *
 * Usage: cells_loop [-b BATCH] [-t SECONDS] [-o xor|open|seal|all]
 * SECONDS is per operation; -o picks the operations to time (default all). Prints
 * one JSON object on stdout, with null for operations not timed; exit code 2 if
 * any open failed.
 */

#define _POSIX_C_SOURCE 200809L

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BODY_LEN 2040
#define TAG_LEN crypto_aead_chacha20poly1305_ietf_ABYTES /* 16 */
#define PLAIN_LEN (BODY_LEN - TAG_LEN)                   /* 2024 */
#define KEY_LEN crypto_stream_chacha20_ietf_KEYBYTES     /* 32 */
#define NONCE_LEN crypto_stream_chacha20_ietf_NONCEBYTES /* 12 */

typedef enum { OP_XOR, OP_OPEN, OP_SEAL } op_kind;

typedef struct {
    size_t batch;
    unsigned char key[KEY_LEN];
    unsigned char *bodies;     /* batch * BODY_LEN */
    unsigned char *sealed;     /* batch * BODY_LEN, valid ciphertexts for counters 0.. */
    unsigned char *plaintexts; /* batch * PLAIN_LEN */
    unsigned long long failures;
} workspace;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void cell_nonce(unsigned char nonce[NONCE_LEN], uint64_t counter) {
    for (int i = 0; i < 8; i++) {
        nonce[i] = (unsigned char)(counter >> (8 * i));
    }
    memset(nonce + 8, 0, 4);
}

/* Pass-through layer over a batch, in place; cell k uses counter + k. */
static void xor_batch(workspace *w, uint64_t counter) {
    unsigned char nonce[NONCE_LEN];
    for (size_t k = 0; k < w->batch; k++) {
        unsigned char *body = w->bodies + k * BODY_LEN;
        cell_nonce(nonce, counter + k);
        crypto_stream_chacha20_ietf_xor_ic(body, body, BODY_LEN, nonce, 0, w->key);
    }
}

/* End layer seal: plaintexts -> bodies. */
static void seal_batch(workspace *w, uint64_t counter, unsigned char *dst) {
    unsigned char nonce[NONCE_LEN];
    for (size_t k = 0; k < w->batch; k++) {
        cell_nonce(nonce, counter + k);
        crypto_aead_chacha20poly1305_ietf_encrypt(dst + k * BODY_LEN, NULL,
                                                  w->plaintexts + k * PLAIN_LEN, PLAIN_LEN, NULL,
                                                  0, NULL, nonce, w->key);
    }
}

/* End layer open of the pre-sealed batch (counters 0 .. batch-1). */
static void open_batch(workspace *w) {
    unsigned char nonce[NONCE_LEN];
    for (size_t k = 0; k < w->batch; k++) {
        cell_nonce(nonce, k);
        if (crypto_aead_chacha20poly1305_ietf_decrypt(w->plaintexts + k * PLAIN_LEN, NULL, NULL,
                                                      w->sealed + k * BODY_LEN, BODY_LEN, NULL, 0,
                                                      nonce, w->key) != 0) {
            w->failures++;
        }
    }
}

static void run_op(workspace *w, op_kind op, uint64_t counter) {
    switch (op) {
    case OP_XOR:
        xor_batch(w, counter);
        break;
    case OP_OPEN:
        open_batch(w);
        break;
    case OP_SEAL:
        seal_batch(w, counter, w->bodies);
        break;
    }
}

/* Run one operation for `seconds`; returns body bytes per second. */
static double time_op(workspace *w, op_kind op, double seconds) {
    uint64_t counter = 0;
    unsigned long long cells = 0;
    run_op(w, op, counter); /* warm-up */
    double start = now_seconds(), elapsed = 0.0;
    do {
        run_op(w, op, counter);
        counter += w->batch;
        cells += w->batch;
        elapsed = now_seconds() - start;
    } while (elapsed < seconds);
    return (double)cells * BODY_LEN / elapsed;
}

static void hex_digest(char out[65], const unsigned char *data, size_t len) {
    unsigned char digest[32];
    crypto_generichash(digest, sizeof digest, data, len, NULL, 0);
    sodium_bin2hex(out, 65, digest, sizeof digest);
}

/* The fixed check case (see header comment); fills the two hex digests. */
static void check_case(workspace *w, char xor_hex[65], char seal_hex[65]) {
    for (size_t i = 0; i < KEY_LEN; i++) {
        w->key[i] = (unsigned char)i;
    }
    memset(w->bodies, 0, w->batch * BODY_LEN);
    memset(w->plaintexts, 0, w->batch * PLAIN_LEN);
    xor_batch(w, 0);
    hex_digest(xor_hex, w->bodies, w->batch * BODY_LEN);
    seal_batch(w, 0, w->bodies);
    hex_digest(seal_hex, w->bodies, w->batch * BODY_LEN);
}

static void print_rate(const char *name, double bytes_per_s, int timed) {
    if (timed) {
        printf("\"%s_bytes_per_s\": %.1f, ", name, bytes_per_s);
    } else {
        printf("\"%s_bytes_per_s\": null, ", name);
    }
}

int main(int argc, char **argv) {
    size_t batch = 64;
    double seconds = 1.0;
    const char *ops = "all";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-b") == 0 && i + 1 < argc) {
            batch = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            seconds = strtod(argv[++i], NULL);
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            ops = argv[++i];
        } else {
            fprintf(stderr, "usage: cells_loop [-b BATCH] [-t SECONDS] [-o xor|open|seal|all]\n");
            return 64;
        }
    }
    if (batch == 0 || sodium_init() < 0) {
        fprintf(stderr, "bad batch size or sodium_init failed\n");
        return 1;
    }

    workspace w = {.batch = batch, .failures = 0};
    w.bodies = malloc(batch * BODY_LEN);
    w.sealed = malloc(batch * BODY_LEN);
    w.plaintexts = malloc(batch * PLAIN_LEN);
    if (w.bodies == NULL || w.sealed == NULL || w.plaintexts == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    char xor_hex[65], seal_hex[65];
    check_case(&w, xor_hex, seal_hex);

    /* Fresh key and data for the timed loops; pre-seal the batch that `open` reads. */
    randombytes_buf(w.key, sizeof w.key);
    randombytes_buf(w.bodies, batch * BODY_LEN);
    randombytes_buf(w.plaintexts, batch * PLAIN_LEN);
    seal_batch(&w, 0, w.sealed);

    int all = strcmp(ops, "all") == 0;
    int do_xor = all || strcmp(ops, "xor") == 0;
    int do_open = all || strcmp(ops, "open") == 0;
    int do_seal = all || strcmp(ops, "seal") == 0;
    if (!(do_xor || do_open || do_seal)) {
        fprintf(stderr, "unknown operation: %s\n", ops);
        return 64;
    }
    double xor_bps = do_xor ? time_op(&w, OP_XOR, seconds) : 0.0;
    double open_bps = do_open ? time_op(&w, OP_OPEN, seconds) : 0.0;
    double seal_bps = do_seal ? time_op(&w, OP_SEAL, seconds) : 0.0;

    printf("{");
    print_rate("xor", xor_bps, do_xor);
    print_rate("open", open_bps, do_open);
    print_rate("seal", seal_bps, do_seal);
    printf("\"batch\": %zu, \"cell_len\": %d, \"open_failures\": %llu, "
           "\"digests\": {\"xor\": \"%s\", \"seal\": \"%s\"}}\n",
           batch, BODY_LEN, w.failures, xor_hex, seal_hex);
    free(w.bodies);
    free(w.sealed);
    free(w.plaintexts);
    return w.failures == 0 ? 0 : 2;
}
