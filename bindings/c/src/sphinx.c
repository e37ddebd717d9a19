/* Sphinx packets, version 1 (spec/sphinx.md): Lioness, per-hop keys, create, unwrap,
 * single-use reply blocks. */
#include "internal.h"

#define ALPHA_LEN QNET_SPHINX_ALPHA_LEN
#define GAMMA_LEN QNET_SPHINX_GAMMA_LEN
#define BETA_LEN QNET_SPHINX_BETA_LEN
#define SLOT_LEN QNET_SPHINX_SLOT_LEN
#define HEADER_LEN QNET_SPHINX_HEADER_LEN
#define PAYLOAD_LEN QNET_SPHINX_PAYLOAD_LEN
#define PACKET_LEN QNET_SPHINX_PACKET_LEN
#define MESSAGE_LEN QNET_SPHINX_MESSAGE_LEN
#define OKM_LEN QNET_SPHINX_OKM_LEN
#define ROUTING_LEN (BETA_LEN + SLOT_LEN) /* 576 */
#define ZERO_PREFIX 16
#define LIONESS_LEFT 32

static const uint8_t SALT[] = "qnet-sphinx-v1";
#define SALT_LEN (sizeof SALT - 1)
static const uint8_t SURB_INFO[] = "surb payload";
static const uint8_t ZERO_NONCE[12] = {0};

/* okm layout (spec/sphinx.md §4) */
#define OKM_STREAM 0
#define OKM_MAC 32
#define OKM_LIONESS 64
#define OKM_REPLAY 192
#define OKM_HOP_SECRET 208

static void hop_okm(uint8_t okm[OKM_LEN], const uint8_t shared[32], const uint8_t alpha[32],
                    const uint8_t node_public[32]) {
    uint8_t prk[32];
    qnet_part info[2] = {{alpha, 32}, {node_public, 32}};
    qnet_hkdf_extract(prk, SALT, SALT_LEN, shared, 32);
    qnet_hkdf_expand(okm, OKM_LEN, prk, sizeof prk, info, 2);
    sodium_memzero(prk, sizeof prk);
}

/* S(k, n) XORed into buf: ChaCha20, zero nonce, block counter 0. */
static void stream_xor(uint8_t *out, const uint8_t *in, size_t n, const uint8_t key[32]) {
    crypto_stream_chacha20_ietf_xor_ic(out, in, n, ZERO_NONCE, 0, key);
}

/* ---------------------------------------------------------------- Lioness (§5) */

/* R ^= S(L ^ k, |R|) */
static void lioness_stream(uint8_t *block, size_t len, const uint8_t k[32]) {
    uint8_t key[32];
    qnet_xor(key, block, k, 32);
    stream_xor(block + LIONESS_LEFT, block + LIONESS_LEFT, len - LIONESS_LEFT, key);
    sodium_memzero(key, sizeof key);
}

/* L ^= H(k, R) */
static void lioness_hash(uint8_t *block, size_t len, const uint8_t k[32]) {
    uint8_t h[32];
    crypto_generichash(h, sizeof h, block + LIONESS_LEFT, len - LIONESS_LEFT, k, 32);
    qnet_xor(block, block, h, 32);
    sodium_memzero(h, sizeof h);
}

static void lioness_enc(const uint8_t *keys, uint8_t *block, size_t len) {
    lioness_stream(block, len, keys);
    lioness_hash(block, len, keys + 32);
    lioness_stream(block, len, keys + 64);
    lioness_hash(block, len, keys + 96);
}

static void lioness_dec(const uint8_t *keys, uint8_t *block, size_t len) {
    lioness_hash(block, len, keys + 96);
    lioness_stream(block, len, keys + 64);
    lioness_hash(block, len, keys + 32);
    lioness_stream(block, len, keys);
}

qnet_status qnet_lioness_encrypt(const uint8_t keys[QNET_LIONESS_KEYS_LEN], const uint8_t *in,
                                 size_t len, uint8_t *out) {
    if (keys == NULL || in == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    if (len <= LIONESS_LEFT) {
        return QNET_ERR_LENGTH;
    }
    if (out != in) {
        memmove(out, in, len);
    }
    lioness_enc(keys, out, len);
    return QNET_OK;
}

qnet_status qnet_lioness_decrypt(const uint8_t keys[QNET_LIONESS_KEYS_LEN], const uint8_t *in,
                                 size_t len, uint8_t *out) {
    if (keys == NULL || in == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    if (len <= LIONESS_LEFT) {
        return QNET_ERR_LENGTH;
    }
    if (out != in) {
        memmove(out, in, len);
    }
    lioness_dec(keys, out, len);
    return QNET_OK;
}

/* ---------------------------------------------------------------- slots (§6) */

static int is_relaying(uint8_t command) {
    return command == QNET_CMD_RELAY || command == QNET_CMD_CIRCUIT_EXTEND;
}

static int known_command(uint8_t command) {
    return command >= QNET_CMD_RELAY && command <= QNET_CMD_CIRCUIT_END;
}

/* Which optional fields a command may set (everything else must be zero). */
static int uses_delay(uint8_t c) {
    return c == QNET_CMD_RELAY || c == QNET_CMD_DELIVER || c == QNET_CMD_SURB_REPLY;
}
static int uses_address(uint8_t c) {
    return c != QNET_CMD_CIRCUIT_END;
}
static int uses_tag(uint8_t c) {
    return c == QNET_CMD_DELIVER || c == QNET_CMD_SURB_REPLY || c == QNET_CMD_CIRCUIT_END;
}
static int uses_params(uint8_t c) {
    return c == QNET_CMD_CIRCUIT_EXTEND || c == QNET_CMD_CIRCUIT_END;
}

/* 1 if the slot's fields fit its command. */
static int slot_fields_ok(const qnet_slot *s) {
    if (!known_command(s->command)) {
        return 0;
    }
    if (s->delay_us && !uses_delay(s->command)) {
        return 0;
    }
    if (!uses_address(s->command) && !qnet_all_zero(s->address, sizeof s->address)) {
        return 0;
    }
    if (!uses_tag(s->command) && !qnet_all_zero(s->tag, sizeof s->tag)) {
        return 0;
    }
    if (!uses_params(s->command) && !qnet_all_zero(s->params, sizeof s->params)) {
        return 0;
    }
    return 1;
}

qnet_status qnet_sphinx_slot_encode(const qnet_slot *slot, const uint8_t next_alpha[32],
                                    const uint8_t next_gamma[16], uint8_t out[96]) {
    if (slot == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    if (!slot_fields_ok(slot)) {
        return QNET_ERR_ROUTE;
    }
    memset(out, 0, SLOT_LEN);
    out[0] = slot->command;
    qnet_put_be32(out + 4, slot->delay_us);
    memcpy(out + 8, slot->address, 32);
    if (is_relaying(slot->command)) {
        if (next_alpha == NULL || next_gamma == NULL) {
            return QNET_ERR_ARG;
        }
        memcpy(out + 40, next_alpha, ALPHA_LEN);
        memcpy(out + 72, next_gamma, GAMMA_LEN);
    } else {
        memcpy(out + 40, slot->tag, 16);
    }
    memcpy(out + 88, slot->params, 8);
    return QNET_OK;
}

qnet_status qnet_sphinx_slot_parse(const uint8_t raw[96], qnet_slot *slot, uint8_t next_alpha[32],
                                   uint8_t next_gamma[16]) {
    if (raw == NULL || slot == NULL) {
        return QNET_ERR_ARG;
    }
    memset(slot, 0, sizeof *slot);
    if (!known_command(raw[0])) {
        return QNET_ERR_COMMAND;
    }
    slot->command = raw[0];
    if (raw[1] | raw[2] | raw[3]) {
        return QNET_ERR_SLOT;
    }
    slot->delay_us = qnet_get_be32(raw + 4);
    memcpy(slot->address, raw + 8, 32);
    memcpy(slot->params, raw + 88, 8);
    if (is_relaying(slot->command)) {
        if (next_alpha) {
            memcpy(next_alpha, raw + 40, ALPHA_LEN);
        }
        if (next_gamma) {
            memcpy(next_gamma, raw + 72, GAMMA_LEN);
        }
    } else {
        memcpy(slot->tag, raw + 40, 16);
        if (!qnet_all_zero(raw + 56, ALPHA_LEN - 16 + GAMMA_LEN)) {
            return QNET_ERR_SLOT;
        }
    }
    return slot_fields_ok(slot) ? QNET_OK : QNET_ERR_SLOT;
}

/* ---------------------------------------------------------------- unwrap (§7) */

qnet_status qnet_sphinx_unwrap(const uint8_t node_private[32], const uint8_t node_public[32],
                               const uint8_t *packet, size_t packet_len,
                               qnet_sphinx_result *out) {
    uint8_t shared[32], okm[OKM_LEN], mac[GAMMA_LEN], routing[ROUTING_LEN];
    uint8_t payload[PAYLOAD_LEN];
    uint8_t next_alpha[ALPHA_LEN], next_gamma[GAMMA_LEN];
    qnet_status st;
    if (node_private == NULL || node_public == NULL || out == NULL ||
        (packet == NULL && packet_len)) {
        return QNET_ERR_ARG;
    }
    memset(out, 0, sizeof *out);
    if (packet_len != PACKET_LEN) {
        return QNET_ERR_LENGTH;
    }
    const uint8_t *alpha = packet;
    const uint8_t *gamma = packet + ALPHA_LEN;
    const uint8_t *beta = packet + ALPHA_LEN + GAMMA_LEN;
    const uint8_t *delta = packet + HEADER_LEN;
    if (qnet_x25519(shared, node_private, alpha) != 0) {
        return QNET_ERR_POINT;
    }
    hop_okm(okm, shared, alpha, node_public);
    crypto_generichash(mac, sizeof mac, beta, BETA_LEN, okm + OKM_MAC, 32);
    if (crypto_verify_16(mac, gamma) != 0) {
        st = QNET_ERR_MAC;
        goto done;
    }
    memcpy(out->replay_tag, okm + OKM_REPLAY, 16);
    memcpy(out->hop_secret, okm + OKM_HOP_SECRET, 32);
    memcpy(routing, beta, BETA_LEN);
    memset(routing + BETA_LEN, 0, SLOT_LEN);
    stream_xor(routing, routing, ROUTING_LEN, okm + OKM_STREAM);
    memcpy(payload, delta, PAYLOAD_LEN);
    lioness_dec(okm + OKM_LIONESS, payload, PAYLOAD_LEN);
    st = qnet_sphinx_slot_parse(routing, &out->slot, next_alpha, next_gamma);
    if (st != QNET_OK) {
        goto done;
    }
    switch (out->slot.command) {
    case QNET_CMD_RELAY:
    case QNET_CMD_CIRCUIT_EXTEND:
        memcpy(out->data, next_alpha, ALPHA_LEN);
        memcpy(out->data + ALPHA_LEN, next_gamma, GAMMA_LEN);
        memcpy(out->data + ALPHA_LEN + GAMMA_LEN, routing + SLOT_LEN, BETA_LEN);
        memcpy(out->data + HEADER_LEN, payload, PAYLOAD_LEN);
        out->data_len = PACKET_LEN;
        break;
    case QNET_CMD_SURB_REPLY:
        memcpy(out->data, payload, PAYLOAD_LEN);
        out->data_len = PAYLOAD_LEN;
        break;
    default: /* DELIVER, CIRCUIT_END */
        if (!qnet_all_zero(payload, ZERO_PREFIX)) {
            st = QNET_ERR_PAYLOAD;
            goto done;
        }
        memcpy(out->data, payload + ZERO_PREFIX, MESSAGE_LEN);
        out->data_len = MESSAGE_LEN;
        break;
    }
    st = QNET_OK;
done:
    if (st != QNET_OK) {
        /* keep the slot and replay tag (the MAC verified) but no data */
        sodium_memzero(out->data, sizeof out->data);
        out->data_len = 0;
        if (st == QNET_ERR_MAC) {
            memset(&out->slot, 0, sizeof out->slot);
        }
    }
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(okm, sizeof okm);
    sodium_memzero(routing, sizeof routing);
    sodium_memzero(payload, sizeof payload);
    return st;
}

/* ---------------------------------------------------------------- create (§8) */

static qnet_status check_route(const qnet_route_hop *route, size_t n) {
    if (route == NULL || n < 1 || n > QNET_SPHINX_MAX_HOPS) {
        return QNET_ERR_ROUTE;
    }
    for (size_t i = 0; i < n; i++) {
        int last = i == n - 1;
        if (!known_command(route[i].slot.command) || is_relaying(route[i].slot.command) == last) {
            return QNET_ERR_ROUTE;
        }
    }
    return QNET_OK;
}

/* Build the header for `route` (steps 1-4).  `keys` receives every hop's keys. */
static qnet_status build_header(const qnet_route_hop *route, size_t n, const uint8_t *ephemerals,
                                const uint8_t *padding, uint8_t header[HEADER_LEN],
                                qnet_sphinx_hop_keys *keys) {
    uint8_t e[32];
    uint8_t streams[QNET_SPHINX_MAX_HOPS][ROUTING_LEN];
    uint8_t filler[BETA_LEN];
    uint8_t beta[BETA_LEN], next_beta[BETA_LEN];
    uint8_t gamma[GAMMA_LEN];
    uint8_t slot_raw[SLOT_LEN];
    qnet_status st = check_route(route, n);
    if (st != QNET_OK) {
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        qnet_draw(e, ephemerals ? ephemerals + 32 * i : NULL, 32);
        crypto_scalarmult_base(keys[i].alpha, e);
        if (qnet_x25519(keys[i].shared, e, route[i].public_key) != 0) {
            st = QNET_ERR_ROUTE;
            goto done;
        }
        hop_okm(keys[i].okm, keys[i].shared, keys[i].alpha, route[i].public_key);
        memset(streams[i], 0, ROUTING_LEN);
        stream_xor(streams[i], streams[i], ROUTING_LEN, keys[i].okm + OKM_STREAM);
    }
    /* filler: phi_{i+1} = (phi_i || 96 zero) ^ S_i[480 - 96 i : 576] */
    size_t flen = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        memset(filler + flen, 0, SLOT_LEN);
        flen += SLOT_LEN;
        qnet_xor(filler, filler, streams[i] + BETA_LEN - SLOT_LEN * i, flen);
    }
    /* last hop */
    size_t pad_len = BETA_LEN - SLOT_LEN * n;
    size_t head_len = BETA_LEN - SLOT_LEN * (n - 1);
    st = qnet_sphinx_slot_encode(&route[n - 1].slot, NULL, NULL, beta);
    if (st != QNET_OK) {
        goto done;
    }
    qnet_draw(beta + SLOT_LEN, padding, pad_len);
    qnet_xor(beta, beta, streams[n - 1], head_len);
    memcpy(beta + head_len, filler, flen);
    crypto_generichash(gamma, GAMMA_LEN, beta, BETA_LEN, keys[n - 1].okm + OKM_MAC, 32);
    /* earlier hops */
    for (size_t k = n - 1; k-- > 0;) {
        qnet_slot slot = route[k].slot;
        memcpy(slot.address, route[k + 1].node_id, 32);
        st = qnet_sphinx_slot_encode(&slot, keys[k + 1].alpha, gamma, slot_raw);
        if (st != QNET_OK) {
            goto done;
        }
        memcpy(next_beta, slot_raw, SLOT_LEN);
        memcpy(next_beta + SLOT_LEN, beta, BETA_LEN - SLOT_LEN);
        qnet_xor(beta, next_beta, streams[k], BETA_LEN);
        crypto_generichash(gamma, GAMMA_LEN, beta, BETA_LEN, keys[k].okm + OKM_MAC, 32);
    }
    memcpy(header, keys[0].alpha, ALPHA_LEN);
    memcpy(header + ALPHA_LEN, gamma, GAMMA_LEN);
    memcpy(header + ALPHA_LEN + GAMMA_LEN, beta, BETA_LEN);
done:
    sodium_memzero(e, sizeof e);
    sodium_memzero(streams, sizeof streams);
    sodium_memzero(filler, sizeof filler);
    sodium_memzero(next_beta, sizeof next_beta);
    return st;
}

static qnet_status encode_message(uint8_t payload[PAYLOAD_LEN], const uint8_t *message,
                                  size_t message_len) {
    if (message_len > MESSAGE_LEN) {
        return QNET_ERR_LENGTH;
    }
    if (message == NULL && message_len) {
        return QNET_ERR_ARG;
    }
    memset(payload, 0, PAYLOAD_LEN);
    if (message_len) {
        memcpy(payload + ZERO_PREFIX, message, message_len);
    }
    return QNET_OK;
}

qnet_status qnet_sphinx_create(const qnet_route_hop *route, size_t n_hops, const uint8_t *message,
                               size_t message_len, const uint8_t *ephemerals,
                               const uint8_t *padding, uint8_t *packet_out,
                               qnet_sphinx_hop_keys *hops_out) {
    qnet_sphinx_hop_keys keys[QNET_SPHINX_MAX_HOPS];
    uint8_t header[HEADER_LEN];
    uint8_t payload[PAYLOAD_LEN];
    qnet_status st;
    if (packet_out == NULL || route == NULL) {
        return QNET_ERR_ARG;
    }
    st = encode_message(payload, message, message_len);
    if (st != QNET_OK) {
        return st;
    }
    st = build_header(route, n_hops, ephemerals, padding, header, keys);
    if (st == QNET_OK) {
        for (size_t i = n_hops; i-- > 0;) {
            lioness_enc(keys[i].okm + OKM_LIONESS, payload, PAYLOAD_LEN);
        }
        memcpy(packet_out, header, HEADER_LEN);
        memcpy(packet_out + HEADER_LEN, payload, PAYLOAD_LEN);
        if (hops_out) {
            memcpy(hops_out, keys, n_hops * sizeof keys[0]);
        }
    }
    sodium_memzero(keys, sizeof keys);
    sodium_memzero(payload, sizeof payload);
    return st;
}

/* ---------------------------------------------------------------- SURBs (§9) */

static void surb_payload_keys(uint8_t out[QNET_LIONESS_KEYS_LEN], const uint8_t surb_key[32]) {
    uint8_t prk[32];
    qnet_part info = {SURB_INFO, sizeof SURB_INFO - 1};
    qnet_hkdf_extract(prk, SALT, SALT_LEN, surb_key, 32);
    qnet_hkdf_expand(out, QNET_LIONESS_KEYS_LEN, prk, sizeof prk, &info, 1);
    sodium_memzero(prk, sizeof prk);
}

qnet_status qnet_surb_create(const qnet_route_hop *route, size_t n_hops, const uint8_t *surb_id,
                             const uint8_t *ephemerals, const uint8_t *padding,
                             const uint8_t *surb_key, uint8_t *surb_out,
                             qnet_surb_secrets *secrets_out, qnet_sphinx_hop_keys *hops_out) {
    qnet_route_hop hops[QNET_SPHINX_MAX_HOPS];
    qnet_sphinx_hop_keys keys[QNET_SPHINX_MAX_HOPS];
    uint8_t header[HEADER_LEN];
    qnet_status st;
    if (route == NULL || surb_out == NULL || secrets_out == NULL) {
        return QNET_ERR_ARG;
    }
    if (n_hops < 1 || n_hops > QNET_SPHINX_MAX_HOPS ||
        route[n_hops - 1].slot.command != QNET_CMD_SURB_REPLY) {
        return QNET_ERR_ROUTE;
    }
    memset(secrets_out, 0, sizeof *secrets_out);
    memcpy(hops, route, n_hops * sizeof hops[0]);
    qnet_draw(secrets_out->surb_id, surb_id, QNET_SURB_ID_LEN);
    memcpy(hops[n_hops - 1].slot.tag, secrets_out->surb_id, QNET_SURB_ID_LEN);
    memset(hops[n_hops - 1].slot.params, 0, QNET_SPHINX_PARAMS_LEN);
    st = build_header(hops, n_hops, ephemerals, padding, header, keys);
    if (st == QNET_OK) {
        qnet_draw(secrets_out->surb_key, surb_key, QNET_SURB_KEY_LEN);
        secrets_out->n_hops = n_hops;
        for (size_t i = 0; i < n_hops; i++) {
            memcpy(secrets_out->lioness_keys[i], keys[i].okm + OKM_LIONESS, QNET_LIONESS_KEYS_LEN);
        }
        memcpy(surb_out, route[0].node_id, 32);
        memcpy(surb_out + 32, header, HEADER_LEN);
        memcpy(surb_out + 32 + HEADER_LEN, secrets_out->surb_key, QNET_SURB_KEY_LEN);
        memset(surb_out + 32 + HEADER_LEN + QNET_SURB_KEY_LEN, 0, 32);
        if (hops_out) {
            memcpy(hops_out, keys, n_hops * sizeof keys[0]);
        }
    } else {
        sodium_memzero(secrets_out, sizeof *secrets_out);
    }
    sodium_memzero(keys, sizeof keys);
    return st;
}

qnet_status qnet_surb_reply(const uint8_t *surb, size_t surb_len, const uint8_t *reply,
                            size_t reply_len, uint8_t first_hop_out[32], uint8_t *packet_out) {
    uint8_t keys[QNET_LIONESS_KEYS_LEN];
    uint8_t payload[PAYLOAD_LEN];
    qnet_status st;
    if (first_hop_out == NULL || packet_out == NULL || (surb == NULL && surb_len)) {
        return QNET_ERR_ARG;
    }
    if (surb_len != QNET_SURB_LEN || !qnet_all_zero(surb + QNET_SURB_LEN - 32, 32)) {
        return QNET_ERR_SURB;
    }
    st = encode_message(payload, reply, reply_len);
    if (st != QNET_OK) {
        return st;
    }
    surb_payload_keys(keys, surb + 32 + HEADER_LEN);
    lioness_enc(keys, payload, PAYLOAD_LEN);
    memcpy(first_hop_out, surb, 32);
    memcpy(packet_out, surb + 32, HEADER_LEN);
    memcpy(packet_out + HEADER_LEN, payload, PAYLOAD_LEN);
    sodium_memzero(keys, sizeof keys);
    sodium_memzero(payload, sizeof payload);
    return QNET_OK;
}

qnet_status qnet_surb_open(const qnet_surb_secrets *secrets, const uint8_t *payload,
                           size_t payload_len, uint8_t reply_out[QNET_SPHINX_MESSAGE_LEN]) {
    uint8_t keys[QNET_LIONESS_KEYS_LEN];
    uint8_t block[PAYLOAD_LEN];
    qnet_status st = QNET_OK;
    if (secrets == NULL || reply_out == NULL || (payload == NULL && payload_len) ||
        secrets->n_hops < 1 || secrets->n_hops > QNET_SPHINX_MAX_HOPS) {
        return QNET_ERR_ARG;
    }
    if (payload_len != PAYLOAD_LEN) {
        return QNET_ERR_LENGTH;
    }
    memcpy(block, payload, PAYLOAD_LEN);
    for (size_t i = secrets->n_hops; i-- > 0;) {
        lioness_enc(secrets->lioness_keys[i], block, PAYLOAD_LEN);
    }
    surb_payload_keys(keys, secrets->surb_key);
    lioness_dec(keys, block, PAYLOAD_LEN);
    if (!qnet_all_zero(block, ZERO_PREFIX)) {
        st = QNET_ERR_PAYLOAD;
    } else {
        memcpy(reply_out, block + ZERO_PREFIX, MESSAGE_LEN);
    }
    sodium_memzero(keys, sizeof keys);
    sodium_memzero(block, sizeof block);
    return st;
}
