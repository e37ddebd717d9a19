/* Status strings, initialisation and HKDF-SHA256 built on libsodium's HMAC-SHA256
 * (libsodium 1.0.18 has no HKDF API). */
#include "internal.h"

typedef struct {
    qnet_status status;
    const char *reason;
    const char *text;
} status_info;

static const status_info STATUS[] = {
    {QNET_OK, "ok", "success"},
    {QNET_ERR_ARG, "bad_argument", "invalid argument (NULL pointer or value out of range)"},
    {QNET_ERR_BUFFER, "buffer_too_small", "output buffer too small"},
    {QNET_ERR_INTERNAL, "internal", "libsodium failed (not initialised?)"},
    {QNET_NEED_MORE, "need_more", "more input is needed"},
    {QNET_ERR_LENGTH, "bad_length", "input has the wrong length"},
    {QNET_ERR_POINT, "bad_point", "small-order X25519 point"},
    {QNET_ERR_MAC, "bad_mac", "Sphinx header MAC mismatch"},
    {QNET_ERR_PAYLOAD, "bad_payload", "payload integrity check or layout failed"},
    {QNET_ERR_SLOT, "bad_slot", "Sphinx slot has bytes set that must be zero"},
    {QNET_ERR_COMMAND, "bad_command", "unknown command"},
    {QNET_ERR_SURB, "bad_surb", "malformed single-use reply block"},
    {QNET_ERR_ROUTE, "bad_route", "route or slot cannot be encoded"},
    {QNET_ERR_TAG, "bad_tag", "authentication tag did not verify"},
    {QNET_ERR_HEADER, "bad_header", "link unit header is malformed"},
    {QNET_ERR_PADDING, "bad_padding", "relay cell padding is not zero"},
    {QNET_ERR_COUNTER, "counter_exhausted", "nonce counter would pass 2^64 - 1"},
    {QNET_ERR_EXT, "bad_ext", "frame ext field is not zero"},
    {QNET_ERR_FRAME_TYPE, "unknown_type", "unknown frame type"},
    {QNET_ERR_STREAM_ID, "bad_stream_id", "frame type not allowed on this stream id"},
    {QNET_ERR_MISSING, "missing", "no ticket"},
    {QNET_ERR_ENCODING, "bad_encoding", "ticket is not canonical base64url of a valid size"},
    {QNET_ERR_VERSION, "bad_version", "unknown version"},
    {QNET_ERR_UNKNOWN_KEY, "unknown_key", "ticket names an unknown key id"},
    {QNET_ERR_STALE, "stale", "ticket is for an hour outside the window"},
    {QNET_ERR_TICKET, "bad_ticket", "ticket does not verify"},
    {QNET_ERR_MALFORMED, "malformed", "malformed directory envelope or context"},
    {QNET_ERR_SIGNATURE, "bad_ed25519_signature", "Ed25519 signature does not verify"},
};

static const status_info *lookup(qnet_status status) {
    for (size_t i = 0; i < sizeof STATUS / sizeof STATUS[0]; i++) {
        if (STATUS[i].status == status) {
            return &STATUS[i];
        }
    }
    return NULL;
}

const char *qnet_strerror(qnet_status status) {
    const status_info *s = lookup(status);
    return s ? s->text : "unknown status";
}

const char *qnet_reason(qnet_status status) {
    const status_info *s = lookup(status);
    return s ? s->reason : "unknown";
}

qnet_status qnet_init(void) {
    return sodium_init() < 0 ? QNET_ERR_INTERNAL : QNET_OK;
}

const char *qnet_version(void) {
    return QNET_VERSION_STRING;
}

void qnet_hkdf_extract(uint8_t prk[32], const uint8_t *salt, size_t salt_len, const uint8_t *ikm,
                       size_t ikm_len) {
    crypto_auth_hmacsha256_state st;
    static const uint8_t empty[1] = {0};
    crypto_auth_hmacsha256_init(&st, salt_len ? salt : empty, salt_len);
    if (ikm_len) {
        crypto_auth_hmacsha256_update(&st, ikm, ikm_len);
    }
    crypto_auth_hmacsha256_final(&st, prk);
    sodium_memzero(&st, sizeof st);
}

void qnet_hkdf_expand(uint8_t *out, size_t out_len, const uint8_t *prk, size_t prk_len,
                      const qnet_part *info, size_t n_parts) {
    crypto_auth_hmacsha256_state base, st;
    uint8_t block[32];
    size_t done = 0;
    uint8_t counter = 1;
    crypto_auth_hmacsha256_init(&base, prk, prk_len);
    while (done < out_len) {
        st = base;
        if (done) {
            crypto_auth_hmacsha256_update(&st, block, sizeof block);
        }
        for (size_t i = 0; i < n_parts; i++) {
            if (info[i].n) {
                crypto_auth_hmacsha256_update(&st, info[i].p, info[i].n);
            }
        }
        crypto_auth_hmacsha256_update(&st, &counter, 1);
        crypto_auth_hmacsha256_final(&st, block);
        size_t take = out_len - done < sizeof block ? out_len - done : sizeof block;
        memcpy(out + done, block, take);
        done += take;
        counter++;
    }
    sodium_memzero(block, sizeof block);
    sodium_memzero(&st, sizeof st);
    sodium_memzero(&base, sizeof base);
}

qnet_status qnet_hkdf_sha256(uint8_t *out, size_t out_len, const uint8_t *salt, size_t salt_len,
                             const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                             size_t info_len) {
    uint8_t prk[32];
    if ((out == NULL && out_len) || (salt == NULL && salt_len) || (ikm == NULL && ikm_len) ||
        (info == NULL && info_len) || out_len > 255 * 32) {
        return QNET_ERR_ARG;
    }
    qnet_part part = {info, info_len};
    qnet_hkdf_extract(prk, salt, salt_len, ikm, ikm_len);
    qnet_hkdf_expand(out, out_len, prk, sizeof prk, &part, 1);
    sodium_memzero(prk, sizeof prk);
    return QNET_OK;
}
