/* Link-unit decoder; a unit that decodes re-encodes to the same bytes. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t again[QNET_UNIT_LEN];
    uint32_t circ;
    uint8_t cmd;
    fuzz_init();
    qnet_status st = qnet_unit_decode(data, size, &circ, &cmd);
    fuzz_status_named(st);
    if (st == QNET_OK) {
        FUZZ_ASSERT(qnet_unit_encode(circ, cmd, data + QNET_UNIT_HEADER_LEN, QNET_CELL_BODY_LEN,
                                     again) == QNET_OK);
        FUZZ_ASSERT(memcmp(again, data, QNET_UNIT_LEN) == 0);
    }
    return 0;
}
