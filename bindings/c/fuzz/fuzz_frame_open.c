/* HTX frames: open arbitrary wire bytes; and seal arbitrary (type, stream id, payload)
 * then open, which drives the post-authentication layout parser with any payload.
 * Input for the second part: type (1) || stream_id (4) || payload. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t payload[QNET_HTX_MAX_PAYLOAD], wire[QNET_HTX_MAX_FRAME];
    static qnet_htx_keys keys;
    uint8_t secret[32];
    qnet_htx_frame fr;
    size_t wlen, flen;
    fuzz_init();
    fuzz_key(secret, 3, 77);
    FUZZ_ASSERT(qnet_htx_keys_from_secret(secret, 0, &keys) == QNET_OK);
    qnet_status st = qnet_htx_frame_open(&keys, 0, data, size, payload, sizeof payload, &fr);
    fuzz_status_named(st);
    if (qnet_htx_frame_size(data, size, &flen) == QNET_OK && st != QNET_NEED_MORE) {
        FUZZ_ASSERT(flen <= size);
    }
    if (size >= 5) {
        size_t n = size - 5 > QNET_HTX_MAX_PAYLOAD ? QNET_HTX_MAX_PAYLOAD : size - 5;
        uint32_t sid = ((uint32_t)data[1] << 24) | ((uint32_t)data[2] << 16) |
                       ((uint32_t)data[3] << 8) | data[4];
        FUZZ_ASSERT(qnet_htx_frame_seal(&keys, 9, data[0], sid, data + 5, n, wire, sizeof wire,
                                        &wlen) == QNET_OK);
        st = qnet_htx_frame_open(&keys, 9, wire, wlen, payload, sizeof payload, &fr);
        fuzz_status_named(st);
        FUZZ_ASSERT(st != QNET_ERR_TAG && st != QNET_ERR_LENGTH && st != QNET_NEED_MORE);
        FUZZ_ASSERT(fr.consumed == wlen);
        if (st == QNET_OK) {
            FUZZ_ASSERT(fr.type == data[0] && fr.stream_id == sid && fr.payload_len == n);
            FUZZ_ASSERT(memcmp(payload, data + 5, n) == 0);
            FUZZ_ASSERT(fr.data_offset + fr.data_len <= n);
        }
        /* any flipped bit is refused */
        wire[(size_t)data[0] * 31 % wlen] ^= 0x20;
        st = qnet_htx_frame_open(&keys, 9, wire, wlen, payload, sizeof payload, &fr);
        FUZZ_ASSERT(st != QNET_OK);
    }
    return 0;
}
