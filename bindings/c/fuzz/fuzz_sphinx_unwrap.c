/* Sphinx unwrap on arbitrary bytes (node key 0 of the vectors' style: fixed), plus the
 * slot parser on the first 96 bytes, which is what a decrypted slot looks like. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static qnet_sphinx_result res;
    uint8_t priv[32], pub[32], alpha[32], gamma[16];
    qnet_slot slot;
    fuzz_init();
    fuzz_key(priv, 7, 3);
    crypto_scalarmult_base(pub, priv);
    qnet_status st = qnet_sphinx_unwrap(priv, pub, data, size, &res);
    fuzz_status_named(st);
    if (size != QNET_SPHINX_PACKET_LEN) {
        FUZZ_ASSERT(st == QNET_ERR_LENGTH);
    }
    if (st == QNET_OK) {
        FUZZ_ASSERT(res.data_len > 0 && res.data_len <= sizeof res.data);
    }
    if (size >= QNET_SPHINX_SLOT_LEN) {
        st = qnet_sphinx_slot_parse(data, &slot, alpha, gamma);
        fuzz_status_named(st);
        if (st == QNET_OK) {
            /* a slot that parses re-encodes to the same bytes */
            uint8_t again[96];
            FUZZ_ASSERT(qnet_sphinx_slot_encode(&slot, alpha, gamma, again) == QNET_OK);
            FUZZ_ASSERT(memcmp(again, data, 96) == 0);
        }
    }
    return 0;
}
