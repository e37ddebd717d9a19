/* Ticket carrier parser and, for what parses, the verifier under a fixed key; plus
 * build -> parse -> verify round trips whose draws come from the input. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static qnet_ticket t;
    static qnet_ticket_key key;
    static char carrier[QNET_TICKET_MAX_CARRIER + 1];
    uint64_t hour = 490896, th;
    size_t clen;
    fuzz_init();
    key.key_id = 7;
    fuzz_key(key.private_key, 11, 5);
    crypto_scalarmult_base(key.public_key, key.private_key);
    qnet_status st = qnet_ticket_parse((const char *)data, size, &t);
    fuzz_status_named(st);
    if (st == QNET_OK) {
        FUZZ_ASSERT(t.padding_len <= QNET_TICKET_MAX_PAD);
        st = qnet_ticket_verify(&t, &key, 1, hour, 1, 1, &th);
        fuzz_status_named(st);
    }
    if (size >= 49) {
        size_t pad = qnet_ticket_padding_len(data[48]);
        uint8_t padding[71] = {0};
        memcpy(padding, data + 49, size - 49 < pad ? size - 49 : pad);
        FUZZ_ASSERT(qnet_ticket_build(key.public_key, key.key_id, hour, data, data + 32, padding,
                                      pad, NULL, 0, NULL, carrier, sizeof carrier,
                                      &clen) == QNET_OK);
        FUZZ_ASSERT(qnet_ticket_parse(carrier, clen, &t) == QNET_OK);
        FUZZ_ASSERT(qnet_ticket_verify(&t, &key, 1, hour + 1, 1, 1, &th) == QNET_OK && th == hour);
        FUZZ_ASSERT(qnet_ticket_verify(&t, &key, 1, hour + 2, 1, 1, &th) == QNET_ERR_STALE);
        FUZZ_ASSERT(qnet_ticket_verify(&t, &key, 1, hour + 3, 1, 1, &th) == QNET_ERR_TICKET);
    }
    return 0;
}
