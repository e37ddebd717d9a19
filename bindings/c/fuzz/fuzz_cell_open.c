/* End-layer open of arbitrary bodies, and seal -> xor -> xor -> open round trips of
 * arbitrary plaintexts (input: 8-byte counter, then plaintext bytes). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t plain[QNET_CELL_PLAINTEXT_LEN], back[QNET_CELL_PLAINTEXT_LEN];
    static uint8_t body[QNET_CELL_BODY_LEN];
    uint8_t key[32], hop[32];
    uint64_t counter = 0;
    fuzz_init();
    fuzz_key(key, 13, 1);
    fuzz_key(hop, 5, 9);
    qnet_status st = qnet_cell_open(key, 0, data, size, back);
    fuzz_status_named(st);
    FUZZ_ASSERT(st == (size == QNET_CELL_BODY_LEN ? QNET_ERR_TAG : QNET_ERR_LENGTH) ||
                st == QNET_OK);
    if (size >= 8) {
        memcpy(&counter, data, 8);
        size_t n = size - 8 < sizeof plain ? size - 8 : sizeof plain;
        memset(plain, 0, sizeof plain);
        memcpy(plain, data + 8, n);
        FUZZ_ASSERT(qnet_cell_seal(key, counter, plain, sizeof plain, body) == QNET_OK);
        FUZZ_ASSERT(qnet_cell_xor(hop, counter, body, sizeof body, body) == QNET_OK);
        FUZZ_ASSERT(qnet_cell_xor(hop, counter, body, sizeof body, body) == QNET_OK);
        FUZZ_ASSERT(qnet_cell_open(key, counter, body, sizeof body, back) == QNET_OK);
        FUZZ_ASSERT(memcmp(plain, back, sizeof plain) == 0);
        body[n % sizeof body] ^= 1;
        FUZZ_ASSERT(qnet_cell_open(key, counter, body, sizeof body, back) == QNET_ERR_TAG);
    }
    return 0;
}
