/*
 * libqnet_loop: the loops of sphinx_loop.c and cells_loop.c, with every packet and cell
 * going through libqnet (bindings/c) instead of raw libsodium calls.  Same inputs,
 * same JSON output fields and the same check digests, so bench/clib.py can put the
 * two side by side in one run.
 *
 *   libqnet_loop sphinx [-n UNWRAPS | -t SECONDS] INPUT
 *       INPUT: node_private (32) || node_public (32) || N packets of 2040 bytes.
 *       qnet_sphinx_unwrap per packet.  The digest is BLAKE2b-256 over the same
 *       2136-byte blocks sphinx_loop hashes (replay_tag || hop_secret || slot ||
 *       next_beta || payload), rebuilt from the libqnet result of a RELAY hop.
 *   libqnet_loop cells [-b BATCH] [-t SECONDS] [-o xor|open|seal|all]
 *       qnet_cell_xor_batch, qnet_cell_open_batch, qnet_cell_seal_batch over batches
 *       of BATCH cells; fixed check case and digests as in cells_loop.c.
 *
 * Build: cc -O3 -Ibindings/c/include bench/c/libqnet_loop.c bindings/c/build/libqnet.a -lsodium
 */

#define _POSIX_C_SOURCE 200809L

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qnet.h"

#define PACKET_LEN QNET_SPHINX_PACKET_LEN
#define OUT_LEN (16 + 32 + 96 + 480 + 1512) /* 2136 */
#define BODY_LEN QNET_CELL_BODY_LEN
#define PLAIN_LEN QNET_CELL_PLAINTEXT_LEN
#define CHUNK 64

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0, got;
    unsigned char *buf = malloc(cap);
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    if (f != stdin) {
        fclose(f);
    }
    *len = n;
    return buf;
}

/* One unwrap through libqnet; fills the 2136-byte block of sphinx_loop. 0 ok. */
static int unwrap(const unsigned char *priv, const unsigned char *pub, const unsigned char *packet,
                  qnet_sphinx_result *res, unsigned char out[OUT_LEN]) {
    if (qnet_sphinx_unwrap(priv, pub, packet, PACKET_LEN, res) != QNET_OK ||
        res->slot.command != QNET_CMD_RELAY) {
        return -1;
    }
    memcpy(out, res->replay_tag, 16);
    memcpy(out + 16, res->hop_secret, 32);
    if (qnet_sphinx_slot_encode(&res->slot, res->data, res->data + 32, out + 48) != QNET_OK) {
        return -1;
    }
    memcpy(out + 48 + 96, res->data + 48, 480 + 1512);
    return 0;
}

static int sphinx_main(int argc, char **argv) {
    unsigned long long unwraps = 0;
    double seconds = 2.0;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            unwraps = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            seconds = strtod(argv[++i], NULL);
        } else if (path == NULL) {
            path = argv[i];
        } else {
            return 64;
        }
    }
    size_t len = 0;
    unsigned char *input = path ? read_all(path, &len) : NULL;
    if (input == NULL || len < 64 + PACKET_LEN || (len - 64) % PACKET_LEN != 0) {
        fprintf(stderr, "input must be 64 key bytes + N * %d packet bytes\n", PACKET_LEN);
        free(input);
        return 1;
    }
    size_t n_packets = (len - 64) / PACKET_LEN;
    const unsigned char *priv = input, *pub = input + 32, *packets = input + 64;
    qnet_sphinx_result *res = malloc(sizeof *res);
    unsigned char out[OUT_LEN];
    unsigned long long failures = 0;
    unsigned checksum = 0;

    crypto_generichash_state digest_state;
    unsigned char digest[32];
    crypto_generichash_init(&digest_state, NULL, 0, sizeof digest);
    for (size_t i = 0; i < n_packets; i++) {
        if (unwrap(priv, pub, packets + i * PACKET_LEN, res, out) != 0) {
            failures++;
            memset(out, 0, sizeof out);
        }
        crypto_generichash_update(&digest_state, out, sizeof out);
    }
    crypto_generichash_final(&digest_state, digest, sizeof digest);

    unsigned long long done = 0;
    size_t next = 0;
    double start = now_seconds(), elapsed = 0.0;
    for (;;) {
        unsigned long long chunk = CHUNK;
        if (unwraps > 0 && unwraps - done < chunk) {
            chunk = unwraps - done;
        }
        for (unsigned long long j = 0; j < chunk; j++) {
            if (qnet_sphinx_unwrap(priv, pub, packets + next * PACKET_LEN, PACKET_LEN, res) !=
                QNET_OK) {
                failures++;
            }
            checksum = checksum * 31u + res->data[j % PACKET_LEN];
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
           "\"failures\": %llu, \"checksum\": %u, \"digest\": \"%s\", \"libqnet\": \"%s\"}\n",
           (double)done / elapsed, done, elapsed, n_packets, failures, checksum, digest_hex,
           qnet_version());
    free(res);
    free(input);
    return failures == 0 ? 0 : 2;
}

typedef struct {
    size_t batch;
    unsigned char key[32];
    unsigned char *bodies, *sealed, *plaintexts;
    unsigned long long failures;
} workspace;

typedef enum { OP_XOR, OP_OPEN, OP_SEAL } op_kind;

static void run_op(workspace *w, op_kind op, uint64_t counter) {
    size_t failed;
    switch (op) {
    case OP_XOR:
        qnet_cell_xor_batch(w->key, counter, w->bodies, w->batch, w->bodies);
        break;
    case OP_OPEN:
        if (qnet_cell_open_batch(w->key, 0, w->sealed, w->batch, w->plaintexts, &failed) !=
            QNET_OK) {
            w->failures++;
        }
        break;
    case OP_SEAL:
        qnet_cell_seal_batch(w->key, counter, w->plaintexts, w->batch, w->bodies);
        break;
    }
}

static double time_op(workspace *w, op_kind op, double seconds) {
    uint64_t counter = 0;
    unsigned long long cells = 0;
    run_op(w, op, counter);
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

static void print_rate(const char *name, double bytes_per_s, int timed) {
    if (timed) {
        printf("\"%s_bytes_per_s\": %.1f, ", name, bytes_per_s);
    } else {
        printf("\"%s_bytes_per_s\": null, ", name);
    }
}

static int cells_main(int argc, char **argv) {
    size_t batch = 64;
    double seconds = 1.0;
    const char *ops = "all";
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-b") == 0 && i + 1 < argc) {
            batch = (size_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            seconds = strtod(argv[++i], NULL);
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            ops = argv[++i];
        } else {
            return 64;
        }
    }
    workspace w = {.batch = batch, .failures = 0};
    w.bodies = malloc(batch * BODY_LEN);
    w.sealed = malloc(batch * BODY_LEN);
    w.plaintexts = malloc(batch * PLAIN_LEN);
    if (batch == 0 || !w.bodies || !w.sealed || !w.plaintexts) {
        fprintf(stderr, "bad batch size or out of memory\n");
        return 1;
    }
    /* fixed check case of cells_loop.c */
    char xor_hex[65], seal_hex[65];
    for (size_t i = 0; i < 32; i++) {
        w.key[i] = (unsigned char)i;
    }
    memset(w.bodies, 0, batch * BODY_LEN);
    memset(w.plaintexts, 0, batch * PLAIN_LEN);
    qnet_cell_xor_batch(w.key, 0, w.bodies, batch, w.bodies);
    hex_digest(xor_hex, w.bodies, batch * BODY_LEN);
    qnet_cell_seal_batch(w.key, 0, w.plaintexts, batch, w.bodies);
    hex_digest(seal_hex, w.bodies, batch * BODY_LEN);

    randombytes_buf(w.key, sizeof w.key);
    randombytes_buf(w.bodies, batch * BODY_LEN);
    randombytes_buf(w.plaintexts, batch * PLAIN_LEN);
    qnet_cell_seal_batch(w.key, 0, w.plaintexts, batch, w.sealed);

    int all = strcmp(ops, "all") == 0;
    int do_xor = all || strcmp(ops, "xor") == 0;
    int do_open = all || strcmp(ops, "open") == 0;
    int do_seal = all || strcmp(ops, "seal") == 0;
    double xor_bps = do_xor ? time_op(&w, OP_XOR, seconds) : 0.0;
    double open_bps = do_open ? time_op(&w, OP_OPEN, seconds) : 0.0;
    double seal_bps = do_seal ? time_op(&w, OP_SEAL, seconds) : 0.0;
    printf("{");
    print_rate("xor", xor_bps, do_xor);
    print_rate("open", open_bps, do_open);
    print_rate("seal", seal_bps, do_seal);
    printf("\"batch\": %zu, \"cell_len\": %d, \"open_failures\": %llu, "
           "\"digests\": {\"xor\": \"%s\", \"seal\": \"%s\"}, \"libqnet\": \"%s\"}\n",
           batch, BODY_LEN, w.failures, xor_hex, seal_hex, qnet_version());
    free(w.bodies);
    free(w.sealed);
    free(w.plaintexts);
    return w.failures == 0 ? 0 : 2;
}

int main(int argc, char **argv) {
    if (qnet_init() != QNET_OK) {
        fprintf(stderr, "qnet_init failed\n");
        return 1;
    }
    if (argc >= 2 && strcmp(argv[1], "sphinx") == 0) {
        return sphinx_main(argc - 2, argv + 2);
    }
    if (argc >= 2 && strcmp(argv[1], "cells") == 0) {
        return cells_main(argc - 2, argv + 2);
    }
    fprintf(stderr, "usage: libqnet_loop sphinx [-n N | -t S] INPUT\n"
                    "       libqnet_loop cells [-b BATCH] [-t S] [-o xor|open|seal|all]\n");
    return 64;
}
