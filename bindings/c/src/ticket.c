/* HTX access tickets (spec/htx-tickets.md §3-§4): build, parse, verify (crypto part). */
#include "internal.h"

static const uint8_t SALT[] = "qnet-htx ticket salt v1";
static const uint8_t INFO_LABEL[] = "qnet-htx ticket v1";
static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t qnet_ticket_padding_len(uint8_t p) {
    return 8 + (size_t)(p % 64);
}

qnet_status qnet_ticket_derive(const uint8_t shared[32], uint64_t hour, uint8_t key_id,
                               const uint8_t server_public[32], const uint8_t client_public[32],
                               const uint8_t nonce[16], const uint8_t *padding,
                               size_t padding_len, uint8_t out[32]) {
    uint8_t prk[32], head[10];
    if (shared == NULL || server_public == NULL || client_public == NULL || nonce == NULL ||
        out == NULL || (padding == NULL && padding_len) || padding_len > QNET_TICKET_MAX_PAD) {
        return QNET_ERR_ARG;
    }
    head[0] = QNET_TICKET_VERSION;
    qnet_put_be64(head + 1, hour);
    head[9] = key_id;
    qnet_part info[6] = {{INFO_LABEL, sizeof INFO_LABEL - 1},
                         {head, sizeof head},
                         {server_public, 32},
                         {client_public, 32},
                         {nonce, QNET_TICKET_NONCE_LEN},
                         {padding, padding_len}};
    qnet_hkdf_extract(prk, SALT, sizeof SALT - 1, shared, 32);
    qnet_hkdf_expand(out, QNET_TICKET_LEN, prk, sizeof prk, info, 6);
    sodium_memzero(prk, sizeof prk);
    return QNET_OK;
}

/* base64url without padding; returns the text length. */
static size_t b64url_encode(char *out, const uint8_t *in, size_t n) {
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
        out[o++] = B64URL[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
    }
    return o;
}

static int b64url_value(char c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

/* Strict decode: only the alphabet, len % 4 != 1, unused low bits zero (canonical).
 * Returns the decoded length or -1. */
static long b64url_decode(uint8_t *out, size_t cap, const char *in, size_t n) {
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (n % 4 == 1) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(in[i]);
        if (v < 0) {
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) {
                return -1;
            }
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) { /* leftover bits must be zero, else re-encoding differs */
        return -1;
    }
    return (long)o;
}

qnet_status qnet_ticket_build(const uint8_t server_public[32], uint8_t key_id, uint64_t hour,
                              const uint8_t *ephemeral, const uint8_t *nonce,
                              const uint8_t *padding, size_t padding_len, uint8_t *wire_out,
                              size_t wire_cap, size_t *wire_len, char *carrier_out,
                              size_t carrier_cap, size_t *carrier_len) {
    uint8_t e[32], shared[32];
    uint8_t wire[QNET_TICKET_MAX_WIRE];
    qnet_status st = QNET_OK;
    if (server_public == NULL || padding_len > QNET_TICKET_MAX_PAD) {
        return QNET_ERR_ARG;
    }
    size_t total = QNET_TICKET_FIXED_LEN + padding_len;
    size_t text_len = (total / 3) * 4 + (total % 3 ? total % 3 + 1 : 0);
    if ((wire_out && wire_cap < total) || (carrier_out && carrier_cap < text_len + 1)) {
        return QNET_ERR_BUFFER;
    }
    qnet_draw(e, ephemeral, 32);
    wire[0] = QNET_TICKET_VERSION;
    crypto_scalarmult_base(wire + 1, e);
    wire[33] = key_id;
    qnet_draw(wire + 34, nonce, QNET_TICKET_NONCE_LEN);
    qnet_draw(wire + QNET_TICKET_FIXED_LEN, padding, padding_len);
    if (qnet_x25519(shared, e, server_public) != 0) {
        st = QNET_ERR_POINT;
        goto done;
    }
    qnet_ticket_derive(shared, hour, key_id, server_public, wire + 1, wire + 34,
                       wire + QNET_TICKET_FIXED_LEN, padding_len, wire + 50);
    if (wire_out) {
        memcpy(wire_out, wire, total);
    }
    if (wire_len) {
        *wire_len = total;
    }
    if (carrier_out) {
        size_t t = b64url_encode(carrier_out, wire, total);
        carrier_out[t] = '\0';
    }
    if (carrier_len) {
        *carrier_len = text_len;
    }
done:
    sodium_memzero(e, sizeof e);
    sodium_memzero(shared, sizeof shared);
    return st;
}

qnet_status qnet_ticket_parse(const char *carrier, size_t carrier_len, qnet_ticket *out) {
    uint8_t wire[QNET_TICKET_MAX_WIRE];
    if (out == NULL || (carrier == NULL && carrier_len)) {
        return QNET_ERR_ARG;
    }
    memset(out, 0, sizeof *out);
    if (carrier_len == 0) {
        return QNET_ERR_MISSING;
    }
    if (carrier_len > QNET_TICKET_MAX_CARRIER) {
        return QNET_ERR_ENCODING;
    }
    long n = b64url_decode(wire, sizeof wire, carrier, carrier_len);
    if (n < QNET_TICKET_FIXED_LEN) {
        return QNET_ERR_ENCODING;
    }
    if (wire[0] != QNET_TICKET_VERSION) {
        return QNET_ERR_VERSION;
    }
    out->version = wire[0];
    memcpy(out->client_public, wire + 1, 32);
    out->key_id = wire[33];
    memcpy(out->nonce, wire + 34, QNET_TICKET_NONCE_LEN);
    memcpy(out->ticket, wire + 50, QNET_TICKET_LEN);
    out->padding_len = (size_t)n - QNET_TICKET_FIXED_LEN;
    memcpy(out->padding, wire + QNET_TICKET_FIXED_LEN, out->padding_len);
    return QNET_OK;
}

/* 1 if the ticket matches any hour server_hour + off for off in offs[0..n), comparing
 * all of them (no early exit); *found gets the first matching hour. */
static int match_hours(const qnet_ticket *t, const qnet_ticket_key *key, const uint8_t shared[32],
                       uint64_t server_hour, const long *offs, size_t n, uint64_t *found) {
    uint8_t want[32];
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t hour = server_hour + (uint64_t)offs[i]; /* wraps like the reference's mod 2^64 */
        qnet_ticket_derive(shared, hour, t->key_id, key->public_key, t->client_public, t->nonce,
                           t->padding, t->padding_len, want);
        int eq = crypto_verify_32(want, t->ticket) == 0;
        if (eq && !any) {
            *found = hour;
        }
        any |= eq;
    }
    sodium_memzero(want, sizeof want);
    return any;
}

#define MAX_WINDOW 64

qnet_status qnet_ticket_verify(const qnet_ticket *ticket, const qnet_ticket_key *keys,
                               size_t n_keys, uint64_t server_hour, unsigned skew_hours,
                               unsigned stale_hours, uint64_t *ticket_hour) {
    long offs[2 * MAX_WINDOW + 1];
    uint8_t shared[32];
    uint64_t found = 0;
    const qnet_ticket_key *key = NULL;
    qnet_status st;
    if (ticket == NULL || (keys == NULL && n_keys) || skew_hours > MAX_WINDOW ||
        stale_hours > MAX_WINDOW || ticket->padding_len > QNET_TICKET_MAX_PAD) {
        return QNET_ERR_ARG;
    }
    if (ticket->version != QNET_TICKET_VERSION) {
        return QNET_ERR_VERSION;
    }
    for (size_t i = 0; i < n_keys; i++) {
        if (keys[i].key_id == ticket->key_id) {
            key = &keys[i];
            break;
        }
    }
    if (key == NULL) {
        return QNET_ERR_UNKNOWN_KEY;
    }
    if (qnet_x25519(shared, key->private_key, ticket->client_public) != 0) {
        return QNET_ERR_TICKET;
    }
    size_t n = 0;
    for (long off = -(long)skew_hours; off <= (long)skew_hours; off++) {
        offs[n++] = off;
    }
    if (match_hours(ticket, key, shared, server_hour, offs, n, &found)) {
        st = QNET_OK;
        if (ticket_hour) {
            *ticket_hour = found;
        }
    } else {
        n = 0;
        for (long k = 1; k <= (long)stale_hours; k++) {
            offs[n++] = -((long)skew_hours + k);
            offs[n++] = (long)skew_hours + k;
        }
        st = match_hours(ticket, key, shared, server_hour, offs, n, &found) ? QNET_ERR_STALE
                                                                            : QNET_ERR_TICKET;
    }
    sodium_memzero(shared, sizeof shared);
    return st;
}
