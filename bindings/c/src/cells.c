/* Link units and relay cells, version 1 (spec/cells.md). */
#include "internal.h"

#define BODY_LEN QNET_CELL_BODY_LEN
#define PLAIN_LEN QNET_CELL_PLAINTEXT_LEN
#define TAG_LEN 16

static const uint8_t CELL_SALT[] = "qnet-cell-v1";
static const uint8_t CELL_INFO[] = "layer keys";

qnet_status qnet_cell_layer_keys(const uint8_t *hop_key_material, size_t material_len,
                                 uint8_t forward[32], uint8_t backward[32]) {
    uint8_t prk[32], okm[64];
    if ((hop_key_material == NULL && material_len) || forward == NULL || backward == NULL) {
        return QNET_ERR_ARG;
    }
    qnet_part info = {CELL_INFO, sizeof CELL_INFO - 1};
    qnet_hkdf_extract(prk, CELL_SALT, sizeof CELL_SALT - 1, hop_key_material, material_len);
    qnet_hkdf_expand(okm, sizeof okm, prk, sizeof prk, &info, 1);
    memcpy(forward, okm, 32);
    memcpy(backward, okm + 32, 32);
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(okm, sizeof okm);
    return QNET_OK;
}

/* 1 if counter + n - 1 stays within 2^64 - 1 (n >= 1). */
static int counters_fit(uint64_t counter, size_t n) {
    return n == 0 || (uint64_t)(n - 1) <= UINT64_MAX - counter;
}

qnet_status qnet_cell_xor(const uint8_t key[32], uint64_t counter, const uint8_t *in, size_t len,
                          uint8_t *out) {
    uint8_t nonce[12];
    if (key == NULL || ((in == NULL || out == NULL) && len)) {
        return QNET_ERR_ARG;
    }
    if (len == 0) {
        return QNET_OK;
    }
    qnet_counter_nonce(nonce, counter);
    crypto_stream_chacha20_ietf_xor_ic(out, in, len, nonce, 0, key);
    return QNET_OK;
}

qnet_status qnet_cell_xor_batch(const uint8_t key[32], uint64_t counter, const uint8_t *in,
                                size_t n_cells, uint8_t *out) {
    uint8_t nonce[12];
    if (key == NULL || ((in == NULL || out == NULL) && n_cells) ||
        n_cells > SIZE_MAX / BODY_LEN) {
        return QNET_ERR_ARG;
    }
    if (!counters_fit(counter, n_cells)) {
        return QNET_ERR_COUNTER;
    }
    for (size_t k = 0; k < n_cells; k++) {
        qnet_counter_nonce(nonce, counter + k);
        crypto_stream_chacha20_ietf_xor_ic(out + k * BODY_LEN, in + k * BODY_LEN, BODY_LEN, nonce,
                                           0, key);
    }
    return QNET_OK;
}

static void seal_one(const uint8_t key[32], uint64_t counter, const uint8_t *plain, uint8_t *body) {
    uint8_t nonce[12];
    qnet_counter_nonce(nonce, counter);
    crypto_aead_chacha20poly1305_ietf_encrypt(body, NULL, plain, PLAIN_LEN, NULL, 0, NULL, nonce,
                                              key);
}

static int open_one(const uint8_t key[32], uint64_t counter, const uint8_t *body, uint8_t *plain) {
    uint8_t nonce[12];
    qnet_counter_nonce(nonce, counter);
    return crypto_aead_chacha20poly1305_ietf_decrypt(plain, NULL, NULL, body, BODY_LEN, NULL, 0,
                                                     nonce, key);
}

qnet_status qnet_cell_seal(const uint8_t key[32], uint64_t counter, const uint8_t *plaintext,
                           size_t plaintext_len, uint8_t body_out[QNET_CELL_BODY_LEN]) {
    if (key == NULL || body_out == NULL || (plaintext == NULL && plaintext_len)) {
        return QNET_ERR_ARG;
    }
    if (plaintext_len != PLAIN_LEN) {
        return QNET_ERR_LENGTH;
    }
    seal_one(key, counter, plaintext, body_out);
    return QNET_OK;
}

qnet_status qnet_cell_seal_batch(const uint8_t key[32], uint64_t counter,
                                 const uint8_t *plaintexts, size_t n_cells, uint8_t *bodies_out) {
    if (key == NULL || ((plaintexts == NULL || bodies_out == NULL) && n_cells) ||
        n_cells > SIZE_MAX / BODY_LEN) {
        return QNET_ERR_ARG;
    }
    if (!counters_fit(counter, n_cells)) {
        return QNET_ERR_COUNTER;
    }
    for (size_t k = 0; k < n_cells; k++) {
        seal_one(key, counter + k, plaintexts + k * PLAIN_LEN, bodies_out + k * BODY_LEN);
    }
    return QNET_OK;
}

qnet_status qnet_cell_open(const uint8_t key[32], uint64_t counter, const uint8_t *body,
                           size_t body_len, uint8_t plaintext_out[QNET_CELL_PLAINTEXT_LEN]) {
    if (key == NULL || plaintext_out == NULL || (body == NULL && body_len)) {
        return QNET_ERR_ARG;
    }
    if (body_len != BODY_LEN) {
        return QNET_ERR_LENGTH;
    }
    if (open_one(key, counter, body, plaintext_out) != 0) {
        sodium_memzero(plaintext_out, PLAIN_LEN);
        return QNET_ERR_TAG;
    }
    return QNET_OK;
}

qnet_status qnet_cell_open_batch(const uint8_t key[32], uint64_t counter, const uint8_t *bodies,
                                 size_t n_cells, uint8_t *plaintexts_out, size_t *failed_index) {
    if (key == NULL || failed_index == NULL ||
        ((bodies == NULL || plaintexts_out == NULL) && n_cells) ||
        n_cells > SIZE_MAX / BODY_LEN) {
        return QNET_ERR_ARG;
    }
    *failed_index = n_cells;
    if (!counters_fit(counter, n_cells)) {
        return QNET_ERR_COUNTER;
    }
    for (size_t k = 0; k < n_cells; k++) {
        if (open_one(key, counter + k, bodies + k * BODY_LEN, plaintexts_out + k * PLAIN_LEN) !=
            0) {
            sodium_memzero(plaintexts_out + k * PLAIN_LEN, PLAIN_LEN);
            *failed_index = k;
            return QNET_ERR_TAG;
        }
    }
    return QNET_OK;
}

/* ---------------------------------------------------------------- units (§1) */

static int circuit_command(uint8_t c) {
    return c >= QNET_UNIT_CREATE && c <= QNET_UNIT_DESTROY;
}

qnet_status qnet_unit_encode(uint32_t circ_id, uint8_t command, const uint8_t *body,
                             size_t body_len, uint8_t out[QNET_UNIT_LEN]) {
    if (out == NULL || (body == NULL && body_len)) {
        return QNET_ERR_ARG;
    }
    if (body_len != BODY_LEN) {
        return QNET_ERR_LENGTH;
    }
    if (command > QNET_UNIT_DESTROY) {
        return QNET_ERR_COMMAND;
    }
    if ((command == QNET_UNIT_SPHINX && circ_id) || (circuit_command(command) && !circ_id)) {
        return QNET_ERR_HEADER;
    }
    qnet_put_be32(out, circ_id);
    out[4] = command;
    out[5] = out[6] = out[7] = 0;
    memmove(out + QNET_UNIT_HEADER_LEN, body, BODY_LEN);
    return QNET_OK;
}

qnet_status qnet_unit_decode(const uint8_t *unit, size_t unit_len, uint32_t *circ_id,
                             uint8_t *command) {
    if (circ_id == NULL || command == NULL || (unit == NULL && unit_len)) {
        return QNET_ERR_ARG;
    }
    if (unit_len != QNET_UNIT_LEN) {
        return QNET_ERR_LENGTH;
    }
    if (unit[4] > QNET_UNIT_DESTROY) {
        return QNET_ERR_COMMAND;
    }
    if (unit[5] | unit[6] | unit[7]) {
        return QNET_ERR_HEADER;
    }
    uint32_t id = qnet_get_be32(unit);
    if ((unit[4] == QNET_UNIT_SPHINX && id) || (circuit_command(unit[4]) && !id)) {
        return QNET_ERR_HEADER;
    }
    *circ_id = id;
    *command = unit[4];
    return QNET_OK;
}

/* ---------------------------------------------------------------- relay plaintext (§2) */

qnet_status qnet_relay_cell_encode(uint8_t relay_command, uint16_t stream_id, const uint8_t *data,
                                   size_t data_len, uint8_t out[QNET_CELL_PLAINTEXT_LEN]) {
    if (out == NULL || (data == NULL && data_len)) {
        return QNET_ERR_ARG;
    }
    if (relay_command < QNET_RELAY_BEGIN || relay_command > QNET_RELAY_RESOLVED) {
        return QNET_ERR_COMMAND;
    }
    if (data_len > QNET_RELAY_DATA_MAX) {
        return QNET_ERR_LENGTH;
    }
    memmove(out + QNET_RELAY_HEADER_LEN, data, data_len);
    out[0] = relay_command;
    out[1] = (uint8_t)(stream_id >> 8);
    out[2] = (uint8_t)stream_id;
    out[3] = (uint8_t)(data_len >> 8);
    out[4] = (uint8_t)data_len;
    memset(out + QNET_RELAY_HEADER_LEN + data_len, 0, QNET_RELAY_DATA_MAX - data_len);
    return QNET_OK;
}

qnet_status qnet_relay_cell_decode(const uint8_t *plaintext, size_t plaintext_len,
                                   uint8_t *relay_command, uint16_t *stream_id, size_t *data_len) {
    if (relay_command == NULL || stream_id == NULL || data_len == NULL ||
        (plaintext == NULL && plaintext_len)) {
        return QNET_ERR_ARG;
    }
    if (plaintext_len != PLAIN_LEN) {
        return QNET_ERR_LENGTH;
    }
    if (plaintext[0] < QNET_RELAY_BEGIN || plaintext[0] > QNET_RELAY_RESOLVED) {
        return QNET_ERR_COMMAND;
    }
    size_t len = ((size_t)plaintext[3] << 8) | plaintext[4];
    if (len > QNET_RELAY_DATA_MAX) {
        return QNET_ERR_LENGTH;
    }
    if (!qnet_all_zero(plaintext + QNET_RELAY_HEADER_LEN + len, QNET_RELAY_DATA_MAX - len)) {
        return QNET_ERR_PADDING;
    }
    *relay_command = plaintext[0];
    *stream_id = (uint16_t)(((unsigned)plaintext[1] << 8) | plaintext[2]);
    *data_len = len;
    return QNET_OK;
}
