/* Directory documents: node id, envelope split, Ed25519 signature check
 * (spec/directory.md §3-§4).  The ML-DSA-65 half is not here. */
#include <stdlib.h>

#include "internal.h"

static const uint8_t NODE_ID_KEY[32] = "qnet-dir-v1 node-id"; /* zero-filled to 32 bytes */

qnet_status qnet_dir_node_id(const uint8_t ed25519_public[32], const uint8_t *mldsa65_public,
                             size_t mldsa65_len, uint8_t out[32]) {
    crypto_generichash_state st;
    if (ed25519_public == NULL || mldsa65_public == NULL || out == NULL) {
        return QNET_ERR_ARG;
    }
    if (mldsa65_len != QNET_DIR_MLDSA65_PUBLIC_LEN) {
        return QNET_ERR_LENGTH;
    }
    crypto_generichash_init(&st, NODE_ID_KEY, sizeof NODE_ID_KEY, 32);
    crypto_generichash_update(&st, ed25519_public, QNET_DIR_ED25519_PUBLIC_LEN);
    crypto_generichash_update(&st, mldsa65_public, mldsa65_len);
    crypto_generichash_final(&st, out, 32);
    return QNET_OK;
}

/* A cursor over CBOR bytes. */
typedef struct {
    const uint8_t *p;
    size_t n;
    size_t pos;
} reader;

/* Read one head of major type `major` with a shortest-form argument.  0 ok, -1 bad. */
static int read_head(reader *r, unsigned major, uint64_t *arg) {
    if (r->pos >= r->n || (r->p[r->pos] >> 5) != major) {
        return -1;
    }
    unsigned info = r->p[r->pos] & 31u;
    r->pos++;
    if (info < 24) {
        *arg = info;
        return 0;
    }
    if (info > 27) {
        return -1; /* indefinite lengths and reserved values are not deterministic CBOR */
    }
    size_t len = (size_t)1 << (info - 24);
    if (r->n - r->pos < len) {
        return -1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        v = (v << 8) | r->p[r->pos + i];
    }
    r->pos += len;
    /* shortest form: the value would not fit the next smaller head */
    static const uint64_t min_for[4] = {24, 0x100, 0x10000, 0x100000000ull};
    if (v < min_for[info - 24]) {
        return -1;
    }
    *arg = v;
    return 0;
}

/* Read a text key and compare it with `want`. */
static int read_key(reader *r, const char *want) {
    uint64_t len;
    size_t wlen = strlen(want);
    if (read_head(r, 3, &len) != 0 || len != wlen || r->n - r->pos < wlen ||
        memcmp(r->p + r->pos, want, wlen) != 0) {
        return -1;
    }
    r->pos += wlen;
    return 0;
}

static int read_bytes(reader *r, const uint8_t **p, size_t *len) {
    uint64_t n;
    if (read_head(r, 2, &n) != 0 || n > r->n - r->pos) {
        return -1;
    }
    *p = r->p + r->pos;
    *len = (size_t)n;
    r->pos += (size_t)n;
    return 0;
}

qnet_status qnet_dir_envelope_split(const uint8_t *envelope, size_t envelope_len,
                                    qnet_dir_envelope *out) {
    reader r = {envelope, envelope_len, 0};
    uint64_t count;
    size_t ed_len, ml_len;
    if (out == NULL || (envelope == NULL && envelope_len)) {
        return QNET_ERR_ARG;
    }
    memset(out, 0, sizeof *out);
    if (read_head(&r, 5, &count) != 0 || count != 3) {
        return QNET_ERR_MALFORMED;
    }
    if (read_key(&r, "body") != 0 || read_bytes(&r, &out->body, &out->body_len) != 0 ||
        read_key(&r, "sig_ed25519") != 0 || read_bytes(&r, &out->sig_ed25519, &ed_len) != 0 ||
        read_key(&r, "sig_mldsa65") != 0 || read_bytes(&r, &out->sig_mldsa65, &ml_len) != 0 ||
        r.pos != r.n) {
        memset(out, 0, sizeof *out);
        return QNET_ERR_MALFORMED;
    }
    if (ed_len != QNET_DIR_ED25519_SIG_LEN || ml_len != QNET_DIR_MLDSA65_SIG_LEN) {
        memset(out, 0, sizeof *out);
        return QNET_ERR_LENGTH;
    }
    return QNET_OK;
}

qnet_status qnet_dir_verify_ed25519(const uint8_t public_key[32], const uint8_t *context,
                                    size_t context_len, const uint8_t *body, size_t body_len,
                                    const uint8_t sig[64], uint8_t *scratch, size_t scratch_len) {
    uint8_t *msg = scratch;
    if (public_key == NULL || context == NULL || sig == NULL || (body == NULL && body_len)) {
        return QNET_ERR_ARG;
    }
    /* one NUL-terminated label */
    if (context_len < 2 || context[context_len - 1] != 0 ||
        memchr(context, 0, context_len - 1) != NULL) {
        return QNET_ERR_MALFORMED;
    }
    if (body_len > SIZE_MAX - context_len) {
        return QNET_ERR_ARG;
    }
    size_t total = context_len + body_len;
    if (msg == NULL) {
        msg = malloc(total);
        if (msg == NULL) {
            return QNET_ERR_BUFFER;
        }
    } else if (scratch_len < total) {
        return QNET_ERR_BUFFER;
    }
    memcpy(msg, context, context_len);
    if (body_len) {
        memcpy(msg + context_len, body, body_len);
    }
    int bad = crypto_sign_verify_detached(sig, msg, total, public_key) != 0;
    if (msg != scratch) {
        free(msg);
    }
    return bad ? QNET_ERR_SIGNATURE : QNET_OK;
}
