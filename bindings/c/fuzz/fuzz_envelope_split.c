/* Directory envelope splitter; on success the three fields lie inside the input. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qnet_dir_envelope env;
    uint8_t pub[32];
    fuzz_init();
    qnet_status st = qnet_dir_envelope_split(data, size, &env);
    fuzz_status_named(st);
    if (st == QNET_OK) {
        FUZZ_ASSERT(env.body >= data && env.body + env.body_len <= data + size);
        FUZZ_ASSERT(env.sig_ed25519 + 64 <= data + size);
        FUZZ_ASSERT(env.sig_mldsa65 + QNET_DIR_MLDSA65_SIG_LEN == data + size);
        fuzz_key(pub, 1, 2);
        st = qnet_dir_verify_ed25519(pub, (const uint8_t *)QNET_DIR_CONTEXT_DESCRIPTOR,
                                     sizeof QNET_DIR_CONTEXT_DESCRIPTOR - 1, env.body,
                                     env.body_len, env.sig_ed25519, NULL, 0);
        fuzz_status_named(st);
    }
    return 0;
}
