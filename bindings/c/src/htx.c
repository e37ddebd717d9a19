/* HTX key schedule and frames (spec/htx.md §3-§4). */
#include "internal.h"

#define LEN_FIELD 3
#define HEADER_LEN QNET_HTX_HEADER_LEN
#define TAG_LEN QNET_HTX_TAG_LEN
#define STREAM_HEADER 11
#define PING_LEN 8

static const uint8_t LABEL_PREFIX[] = "betanet ";

static void expand_label(const uint8_t *secret, size_t secret_len, const char *label,
                         size_t label_len, uint8_t *out, size_t out_len) {
    qnet_part info[2] = {{LABEL_PREFIX, sizeof LABEL_PREFIX - 1},
                         {(const uint8_t *)label, label_len}};
    qnet_hkdf_expand(out, out_len, secret, secret_len, info, 2);
}

qnet_status qnet_htx_expand_label(const uint8_t *secret, size_t secret_len, const char *label,
                                  size_t label_len, uint8_t *out, size_t out_len) {
    if ((secret == NULL && secret_len) || (label == NULL && label_len) ||
        (out == NULL && out_len) || out_len > 255 * 32) {
        return QNET_ERR_ARG;
    }
    expand_label(secret, secret_len, label, label_len, out, out_len);
    return QNET_OK;
}

qnet_status qnet_htx_keys_from_secret(const uint8_t secret[32], uint64_t generation,
                                      qnet_htx_keys *out) {
    uint8_t copy[32];
    if (secret == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    memcpy(copy, secret, 32); /* secret may live inside *out */
    memcpy(out->secret, copy, 32);
    expand_label(copy, 32, "key", 3, out->key, QNET_HTX_KEY_LEN);
    expand_label(copy, 32, "nonce", 5, out->nonce_salt, QNET_HTX_NONCE_LEN);
    out->generation = generation;
    sodium_memzero(copy, sizeof copy);
    return QNET_OK;
}

qnet_status qnet_htx_keys_next(const qnet_htx_keys *cur, qnet_htx_keys *out) {
    uint8_t next[32];
    if (cur == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    uint64_t generation = cur->generation + 1;
    expand_label(cur->secret, 32, "next", 4, next, sizeof next);
    qnet_htx_keys_from_secret(next, generation, out);
    sodium_memzero(next, sizeof next);
    return QNET_OK;
}

qnet_status qnet_htx_session_keys(const uint8_t session_secret[32], uint8_t *k0_out,
                                  qnet_htx_keys *client_out, qnet_htx_keys *server_out) {
    static const uint8_t zero_salt[32] = {0};
    uint8_t k0[32], ts[32];
    if (session_secret == NULL || client_out == NULL || server_out == NULL) {
        return QNET_ERR_ARG;
    }
    qnet_hkdf_extract(k0, zero_salt, sizeof zero_salt, session_secret, 32);
    expand_label(k0, 32, "ts_c", 4, ts, 32);
    qnet_htx_keys_from_secret(ts, 0, client_out);
    expand_label(k0, 32, "ts_s", 4, ts, 32);
    qnet_htx_keys_from_secret(ts, 0, server_out);
    if (k0_out) {
        memcpy(k0_out, k0, 32);
    }
    sodium_memzero(k0, sizeof k0);
    sodium_memzero(ts, sizeof ts);
    return QNET_OK;
}

qnet_status qnet_htx_nonce(const uint8_t nonce_salt[12], uint64_t counter, uint8_t out[12]) {
    uint8_t pad[12];
    if (nonce_salt == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    qnet_counter_nonce(pad, counter);
    qnet_xor(out, nonce_salt, pad, 12);
    return QNET_OK;
}

qnet_status qnet_htx_frame_seal(const qnet_htx_keys *keys, uint64_t counter, uint8_t type,
                                uint32_t stream_id, const uint8_t *payload, size_t payload_len,
                                uint8_t *out, size_t out_cap, size_t *out_len) {
    uint8_t nonce[12];
    if (keys == NULL || out == NULL || out_len == NULL || (payload == NULL && payload_len) ||
        payload_len > QNET_HTX_MAX_PAYLOAD) {
        return QNET_ERR_ARG;
    }
    size_t total = HEADER_LEN + payload_len + TAG_LEN;
    if (out_cap < total) {
        return QNET_ERR_BUFFER;
    }
    size_t len = total - LEN_FIELD;
    out[0] = (uint8_t)(len >> 16);
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)len;
    out[3] = type;
    qnet_put_be32(out + 4, stream_id);
    out[8] = out[9] = 0;
    qnet_htx_nonce(keys->nonce_salt, counter, nonce);
    if (payload_len) {
        memmove(out + HEADER_LEN, payload, payload_len);
    }
    crypto_aead_chacha20poly1305_ietf_encrypt(out + HEADER_LEN, NULL, out + HEADER_LEN, payload_len,
                                              out, HEADER_LEN, NULL, nonce, keys->key);
    *out_len = total;
    return QNET_OK;
}

qnet_status qnet_htx_frame_size(const uint8_t *buf, size_t buf_len, size_t *frame_len) {
    if (frame_len == NULL || (buf == NULL && buf_len)) {
        return QNET_ERR_ARG;
    }
    if (buf_len < LEN_FIELD) {
        return QNET_NEED_MORE;
    }
    size_t len = ((size_t)buf[0] << 16) | ((size_t)buf[1] << 8) | buf[2];
    if (len < QNET_HTX_MIN_LEN || len > QNET_HTX_MAX_LEN) {
        return QNET_ERR_LENGTH;
    }
    *frame_len = len + LEN_FIELD;
    return QNET_OK;
}

/* Field checks of an authenticated frame (spec/htx.md §4.4), in the reference's order. */
static qnet_status parse_payload(const uint8_t *p, size_t n, uint16_t ext, qnet_htx_frame *f) {
    if (ext != 0) {
        return QNET_ERR_EXT;
    }
    switch (f->type) {
    case QNET_FRAME_STREAM: {
        if (n < STREAM_HEADER || (p[0] & ~1u)) {
            return QNET_ERR_PAYLOAD;
        }
        size_t data_len = ((size_t)p[9] << 8) | p[10];
        if (data_len != n - STREAM_HEADER) {
            return QNET_ERR_PAYLOAD;
        }
        f->fin = p[0] & 1u;
        f->offset = qnet_get_be64(p + 1);
        f->data_offset = STREAM_HEADER;
        f->data_len = data_len;
        return QNET_OK;
    }
    case QNET_FRAME_WINDOW_UPDATE:
        if (n != 5 || p[0] > 1) {
            return QNET_ERR_PAYLOAD;
        }
        if ((p[0] == 0) != (f->stream_id == 0)) {
            return QNET_ERR_STREAM_ID;
        }
        f->scope = p[0];
        f->credit = qnet_get_be32(p + 1);
        return f->credit == 0 ? QNET_ERR_PAYLOAD : QNET_OK;
    case QNET_FRAME_PING:
    case QNET_FRAME_KEY_UPDATE:
    case QNET_FRAME_CLOSE:
        if (f->stream_id != 0) {
            return QNET_ERR_STREAM_ID;
        }
        if (f->type == QNET_FRAME_PING) {
            return n == PING_LEN ? QNET_OK : QNET_ERR_PAYLOAD;
        }
        if (f->type == QNET_FRAME_KEY_UPDATE) {
            return n == 0 ? QNET_OK : QNET_ERR_PAYLOAD;
        }
        if (n < 4 || (((size_t)p[2] << 8) | p[3]) != n - 4) {
            return QNET_ERR_PAYLOAD;
        }
        f->close_code = (uint16_t)(((unsigned)p[0] << 8) | p[1]);
        f->data_offset = 4;
        f->data_len = n - 4;
        return QNET_OK;
    default:
        return QNET_ERR_FRAME_TYPE;
    }
}

qnet_status qnet_htx_frame_open(const qnet_htx_keys *keys, uint64_t counter, const uint8_t *wire,
                                size_t wire_len, uint8_t *payload_out, size_t payload_cap,
                                qnet_htx_frame *frame) {
    uint8_t nonce[12];
    size_t frame_len;
    if (keys == NULL || frame == NULL || (wire == NULL && wire_len) ||
        (payload_out == NULL && payload_cap)) {
        return QNET_ERR_ARG;
    }
    memset(frame, 0, sizeof *frame);
    qnet_status st = qnet_htx_frame_size(wire, wire_len, &frame_len);
    if (st != QNET_OK) {
        return st;
    }
    if (wire_len < frame_len) {
        return QNET_NEED_MORE;
    }
    size_t ct_len = frame_len - HEADER_LEN; /* payload + tag */
    size_t n = ct_len - TAG_LEN;
    if (payload_cap < n) {
        return QNET_ERR_BUFFER;
    }
    qnet_htx_nonce(keys->nonce_salt, counter, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(payload_out, NULL, NULL, wire + HEADER_LEN,
                                                  ct_len, wire, HEADER_LEN, nonce,
                                                  keys->key) != 0) {
        if (n) {
            sodium_memzero(payload_out, n);
        }
        return QNET_ERR_TAG;
    }
    frame->type = wire[3];
    frame->stream_id = qnet_get_be32(wire + 4);
    frame->payload_len = n;
    frame->consumed = frame_len;
    uint16_t ext = (uint16_t)(((unsigned)wire[8] << 8) | wire[9]);
    st = parse_payload(payload_out, n, ext, frame);
    if (st != QNET_OK) {
        size_t consumed = frame->consumed;
        memset(frame, 0, sizeof *frame);
        frame->consumed = consumed; /* the frame was authenticated; the stream can skip it */
    }
    return st;
}
