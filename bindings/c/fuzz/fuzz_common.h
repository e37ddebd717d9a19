/* Shared bits of the libFuzzer harnesses: fixed keys and a trap for broken invariants. */
#ifndef QNET_FUZZ_COMMON_H
#define QNET_FUZZ_COMMON_H

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qnet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                 \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

static inline void fuzz_init(void) {
    static int done;
    if (!done) {
        FUZZ_ASSERT(qnet_init() == QNET_OK);
        done = 1;
    }
}

/* A fixed 32-byte key: byte i = i * mul + add. */
static inline void fuzz_key(uint8_t key[32], uint8_t mul, uint8_t add) {
    for (int i = 0; i < 32; i++) {
        key[i] = (uint8_t)(i * mul + add);
    }
}

/* Every status a decoder returns must have a name. */
static inline void fuzz_status_named(qnet_status st) {
    FUZZ_ASSERT(strcmp(qnet_reason(st), "unknown") != 0);
}

#endif
