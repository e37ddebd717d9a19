/* SURB decoding on the replier's side (arbitrary SURB bytes), and SURB open of an
 * arbitrary payload under fixed secrets. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t packet[QNET_SPHINX_PACKET_LEN], reply[QNET_SPHINX_MESSAGE_LEN];
    static qnet_surb_secrets secrets;
    uint8_t first[32];
    fuzz_init();
    qnet_status st = qnet_surb_reply(data, size, data, size > 1496 ? 1496 : size, first, packet);
    fuzz_status_named(st);
    if (size != QNET_SURB_LEN) {
        FUZZ_ASSERT(st == QNET_ERR_SURB || st == QNET_ERR_ARG);
    }
    secrets.n_hops = 1 + size % QNET_SPHINX_MAX_HOPS;
    fuzz_key(secrets.surb_key, 3, 3);
    st = qnet_surb_open(&secrets, data, size, reply);
    fuzz_status_named(st);
    return 0;
}
