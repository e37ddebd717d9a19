/* Relay-cell plaintext decoder, fed 2024-byte inputs padded from the fuzz data so that
 * the layout checks are reached; a plaintext that decodes re-encodes identically. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t plain[QNET_CELL_PLAINTEXT_LEN], again[QNET_CELL_PLAINTEXT_LEN];
    uint8_t cmd;
    uint16_t sid;
    size_t len;
    fuzz_init();
    fuzz_status_named(qnet_relay_cell_decode(data, size, &cmd, &sid, &len));
    memset(plain, 0, sizeof plain);
    memcpy(plain, data, size < sizeof plain ? size : sizeof plain);
    qnet_status st = qnet_relay_cell_decode(plain, sizeof plain, &cmd, &sid, &len);
    fuzz_status_named(st);
    if (st == QNET_OK) {
        FUZZ_ASSERT(len <= QNET_RELAY_DATA_MAX);
        FUZZ_ASSERT(qnet_relay_cell_encode(cmd, sid, plain + QNET_RELAY_HEADER_LEN, len, again) ==
                    QNET_OK);
        FUZZ_ASSERT(memcmp(again, plain, sizeof plain) == 0);
    }
    return 0;
}
