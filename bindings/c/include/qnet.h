/*
 * libqnet: the QNet wire formats in C (spec/ in the QNet repository).
 *
 *   Sphinx packets      spec/sphinx.md       create, unwrap, SURB create / reply / open
 *   relay cells         spec/cells.md        layer keys, pass-through XOR, end-layer seal / open,
 *                                            link units and relay-cell plaintexts
 *   HTX frames          spec/htx.md §3-§4    key schedule, frame seal / open
 *   HTX access tickets  spec/htx-tickets.md  build, parse, verify (the crypto part)
 *   directory           spec/directory.md    node id, envelope split, Ed25519 signature check
 *
 * Rules that hold for every function:
 *
 *   - No I/O, no global state, no allocation (except qnet_dir_verify_ed25519 when it is
 *     given no scratch buffer).  Every function is safe to call from many threads at
 *     once, as long as they do not share output buffers.
 *   - The caller owns every buffer.  Lengths are explicit; fixed-size arguments are
 *     documented with their QNET_*_LEN constant.  Output buffers may not overlap input
 *     buffers unless a function says so.
 *   - Every function returns a qnet_status.  QNET_OK is 0; qnet_strerror() gives a
 *     sentence and qnet_reason() the short code the specs use ("bad_mac", ...).
 *     On failure an output buffer may hold partial data; do not use it.
 *   - Secret intermediate values are wiped with sodium_memzero before returning.
 *   - libsodium must be initialised: call qnet_init() (or sodium_init()) once first.
 *
 * Randomness: the builders take their random draws as arguments, in the order the
 * specs name them, so that recorded vectors can be replayed.  Passing NULL for a
 * draw makes the function take it from libsodium's randombytes_buf().
 */
#ifndef QNET_H
#define QNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QNET_VERSION_MAJOR 1
#define QNET_VERSION_MINOR 0
#define QNET_VERSION_PATCH 0
#define QNET_VERSION_STRING "1.0.0"

/* ---------------------------------------------------------------- status codes */

typedef enum qnet_status {
    QNET_OK = 0,
    QNET_ERR_ARG = 1,         /* NULL pointer or argument out of range (caller's bug)   */
    QNET_ERR_BUFFER = 2,      /* output buffer too small                                 */
    QNET_ERR_INTERNAL = 3,    /* libsodium failed (not initialised, out of memory)       */
    QNET_NEED_MORE = 4,       /* not an error: more input bytes are needed               */
    QNET_ERR_LENGTH = 10,     /* bad_length: input has the wrong size                    */
    QNET_ERR_POINT = 11,      /* bad_point: small-order X25519 point                     */
    QNET_ERR_MAC = 12,        /* bad_mac: Sphinx header MAC mismatch                     */
    QNET_ERR_PAYLOAD = 13,    /* bad_payload: integrity prefix / payload layout wrong    */
    QNET_ERR_SLOT = 14,       /* bad_slot: Sphinx slot bytes that must be zero are not   */
    QNET_ERR_COMMAND = 15,    /* bad_command: unknown command                            */
    QNET_ERR_SURB = 16,       /* bad_surb: malformed single-use reply block              */
    QNET_ERR_ROUTE = 17,      /* route or slot cannot be built (sender side)             */
    QNET_ERR_TAG = 20,        /* bad_tag: AEAD authentication failed                     */
    QNET_ERR_HEADER = 21,     /* bad_header: link-unit header reserved bytes / circ_id   */
    QNET_ERR_PADDING = 22,    /* bad_padding: nonzero relay-cell padding                 */
    QNET_ERR_COUNTER = 23,    /* nonce counter would pass 2^64 - 1                       */
    QNET_ERR_EXT = 30,        /* bad_ext: HTX frame ext field is not 0                   */
    QNET_ERR_FRAME_TYPE = 31, /* unknown_type: unknown HTX frame type                    */
    QNET_ERR_STREAM_ID = 32,  /* bad_stream_id: HTX frame on the wrong stream            */
    QNET_ERR_MISSING = 40,    /* missing: no ticket value                                */
    QNET_ERR_ENCODING = 41,   /* bad_encoding: ticket is not canonical base64url / size  */
    QNET_ERR_VERSION = 42,    /* bad_version: unknown version byte                       */
    QNET_ERR_UNKNOWN_KEY = 43,/* unknown_key: ticket names a key id the server lacks     */
    QNET_ERR_STALE = 44,      /* stale: ticket valid for an hour just outside the window */
    QNET_ERR_TICKET = 45,     /* bad_ticket: ticket does not verify                      */
    QNET_ERR_MALFORMED = 50,  /* malformed directory envelope or signing context         */
    QNET_ERR_SIGNATURE = 51   /* bad_ed25519_signature                                   */
} qnet_status;

/* A sentence describing `status` (static storage; never NULL). */
const char *qnet_strerror(qnet_status status);
/* The spec's short reason code for `status` ("bad_mac", "bad_tag", ..., "ok"). */
const char *qnet_reason(qnet_status status);

/* Initialise libsodium (idempotent, thread-safe as sodium_init is).  Returns
 * QNET_OK or QNET_ERR_INTERNAL. */
qnet_status qnet_init(void);
/* QNET_VERSION_STRING of the library actually linked. */
const char *qnet_version(void);

/* ---------------------------------------------------------------- primitives */

/* HKDF-SHA256 (RFC 5869).  `salt` may be NULL when salt_len is 0.  out_len <= 8160. */
qnet_status qnet_hkdf_sha256(uint8_t *out, size_t out_len, const uint8_t *salt, size_t salt_len,
                             const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                             size_t info_len);

/* ---------------------------------------------------------------- Sphinx (spec/sphinx.md) */

#define QNET_SPHINX_PACKET_LEN 2040
#define QNET_SPHINX_ALPHA_LEN 32
#define QNET_SPHINX_GAMMA_LEN 16
#define QNET_SPHINX_BETA_LEN 480
#define QNET_SPHINX_HEADER_LEN 528
#define QNET_SPHINX_PAYLOAD_LEN 1512
#define QNET_SPHINX_MESSAGE_LEN 1496
#define QNET_SPHINX_SLOT_LEN 96
#define QNET_SPHINX_MAX_HOPS 5
#define QNET_SPHINX_OKM_LEN 240
#define QNET_SPHINX_NODE_ID_LEN 32
#define QNET_SPHINX_TAG_LEN 16
#define QNET_SPHINX_PARAMS_LEN 8
#define QNET_SPHINX_REPLAY_TAG_LEN 16
#define QNET_SPHINX_HOP_SECRET_LEN 32
#define QNET_LIONESS_KEYS_LEN 128
#define QNET_SURB_LEN 624
#define QNET_SURB_ID_LEN 16
#define QNET_SURB_KEY_LEN 32

/* Slot commands (spec/sphinx.md §6). */
enum {
    QNET_CMD_RELAY = 0x01,
    QNET_CMD_DELIVER = 0x02,
    QNET_CMD_SURB_REPLY = 0x03,
    QNET_CMD_CIRCUIT_EXTEND = 0x04,
    QNET_CMD_CIRCUIT_END = 0x05
};

/* One hop's routing instruction.  A field a command does not use must be zero. */
typedef struct qnet_slot {
    uint8_t command;
    uint32_t delay_us;                      /* RELAY, DELIVER, SURB_REPLY only        */
    uint8_t address[QNET_SPHINX_NODE_ID_LEN]; /* next hop / recipient (not CIRCUIT_END) */
    uint8_t tag[QNET_SPHINX_TAG_LEN];       /* DELIVER, SURB_REPLY, CIRCUIT_END       */
    uint8_t params[QNET_SPHINX_PARAMS_LEN]; /* CIRCUIT_EXTEND, CIRCUIT_END            */
} qnet_slot;

/* One hop of a route.  For relaying commands the builder writes the next hop's
 * node_id into the slot's address itself. */
typedef struct qnet_route_hop {
    uint8_t node_id[QNET_SPHINX_NODE_ID_LEN];
    uint8_t public_key[32];
    qnet_slot slot;
} qnet_route_hop;

/* What the sender derived for one hop (spec/sphinx.md §4). */
typedef struct qnet_sphinx_hop_keys {
    uint8_t alpha[32];
    uint8_t shared[32];
    uint8_t okm[QNET_SPHINX_OKM_LEN]; /* okm[64:192] Lioness keys, [192:208] replay tag,
                                         [208:240] hop secret */
} qnet_sphinx_hop_keys;

/* Build a forward packet (spec/sphinx.md §8).
 *   route, n_hops          1..5 hops; the last slot terminal, the others relaying
 *   message                at most QNET_SPHINX_MESSAGE_LEN bytes (NULL if 0)
 *   ephemerals             n_hops * 32 bytes, e_0 first (NULL: random)
 *   padding                480 - 96 * n_hops bytes (NULL: random)
 *   packet_out             QNET_SPHINX_PACKET_LEN bytes
 *   hops_out               n_hops entries, or NULL; holds secrets, wipe after use
 * Errors: ARG, ROUTE (bad route or slot, small-order hop key), INTERNAL. */
qnet_status qnet_sphinx_create(const qnet_route_hop *route, size_t n_hops, const uint8_t *message,
                               size_t message_len, const uint8_t *ephemerals,
                               const uint8_t *padding, uint8_t *packet_out,
                               qnet_sphinx_hop_keys *hops_out);

/* The result of one unwrap. */
typedef struct qnet_sphinx_result {
    qnet_slot slot;                                  /* the parsed slot                 */
    uint8_t replay_tag[QNET_SPHINX_REPLAY_TAG_LEN];
    uint8_t hop_secret[QNET_SPHINX_HOP_SECRET_LEN];  /* circuit commands use it         */
    /* RELAY / CIRCUIT_EXTEND: the next packet (2040 bytes);
     * DELIVER / CIRCUIT_END: the message (1496 bytes);
     * SURB_REPLY: the still-encrypted payload (1512 bytes). */
    uint8_t data[QNET_SPHINX_PACKET_LEN];
    size_t data_len;
} qnet_sphinx_result;

/* Peel one layer (spec/sphinx.md §7) with the node's mix key pair.
 * Returns OK, LENGTH, POINT, MAC, SLOT, COMMAND or PAYLOAD.  Replay protection is
 * the caller's: whenever the MAC verified (OK, SLOT, COMMAND, PAYLOAD) `out->replay_tag`
 * is filled in, and a node records it before acting, so a second copy is a replay. */
qnet_status qnet_sphinx_unwrap(const uint8_t node_private[32], const uint8_t node_public[32],
                               const uint8_t *packet, size_t packet_len,
                               qnet_sphinx_result *out);

/* Encode / parse one 96-byte slot (spec/sphinx.md §6).  next_alpha / next_gamma are
 * used by relaying commands only (may be NULL otherwise).  Parse returns COMMAND or
 * SLOT for a bad slot and fills next_alpha / next_gamma (either may be NULL). */
qnet_status qnet_sphinx_slot_encode(const qnet_slot *slot, const uint8_t next_alpha[32],
                                    const uint8_t next_gamma[16], uint8_t out[96]);
qnet_status qnet_sphinx_slot_parse(const uint8_t raw[96], qnet_slot *slot,
                                   uint8_t next_alpha[32], uint8_t next_gamma[16]);

/* Lioness over ChaCha20 and BLAKE2b (spec/sphinx.md §5); keys k1..k4 (128 bytes).
 * Any block of at least 33 bytes; `out` may equal `in`. */
qnet_status qnet_lioness_encrypt(const uint8_t keys[QNET_LIONESS_KEYS_LEN], const uint8_t *in,
                                 size_t len, uint8_t *out);
qnet_status qnet_lioness_decrypt(const uint8_t keys[QNET_LIONESS_KEYS_LEN], const uint8_t *in,
                                 size_t len, uint8_t *out);

/* What the SURB creator keeps to read the reply (secret: wipe after use). */
typedef struct qnet_surb_secrets {
    uint8_t surb_id[QNET_SURB_ID_LEN];
    uint8_t surb_key[QNET_SURB_KEY_LEN];
    size_t n_hops;
    uint8_t lioness_keys[QNET_SPHINX_MAX_HOPS][QNET_LIONESS_KEYS_LEN];
} qnet_surb_secrets;

/* Make a SURB (spec/sphinx.md §9) for a route whose last slot is SURB_REPLY (its tag
 * is replaced by the SURB id).  Draws, each NULL for random: surb_id (16), then the
 * header's ephemerals (n_hops * 32) and padding (480 - 96 * n_hops), then surb_key (32).
 * surb_out: QNET_SURB_LEN bytes.  hops_out: n_hops entries or NULL. */
qnet_status qnet_surb_create(const qnet_route_hop *route, size_t n_hops, const uint8_t *surb_id,
                             const uint8_t *ephemerals, const uint8_t *padding,
                             const uint8_t *surb_key, uint8_t *surb_out,
                             qnet_surb_secrets *secrets_out, qnet_sphinx_hop_keys *hops_out);

/* The replier: the packet carrying `reply` (<= 1496 bytes) on `surb`, to be sent to
 * first_hop_out.  Errors: SURB (wrong length, reserved bytes set), ARG. */
qnet_status qnet_surb_reply(const uint8_t *surb, size_t surb_len, const uint8_t *reply,
                            size_t reply_len, uint8_t first_hop_out[32], uint8_t *packet_out);

/* The creator: the 1496-byte reply from the payload the gateway handed over.
 * Errors: LENGTH, PAYLOAD (tampered), ARG. */
qnet_status qnet_surb_open(const qnet_surb_secrets *secrets, const uint8_t *payload,
                           size_t payload_len, uint8_t reply_out[QNET_SPHINX_MESSAGE_LEN]);

/* ---------------------------------------------------------------- relay cells (spec/cells.md) */

#define QNET_UNIT_LEN 2048
#define QNET_UNIT_HEADER_LEN 8
#define QNET_CELL_BODY_LEN 2040
#define QNET_CELL_PLAINTEXT_LEN 2024
#define QNET_RELAY_HEADER_LEN 5
#define QNET_RELAY_DATA_MAX 2019

enum {
    QNET_UNIT_PADDING = 0x00,
    QNET_UNIT_SPHINX = 0x01,
    QNET_UNIT_CREATE = 0x02,
    QNET_UNIT_CREATED = 0x03,
    QNET_UNIT_RELAY = 0x04,
    QNET_UNIT_DESTROY = 0x05
};

enum {
    QNET_RELAY_BEGIN = 0x01,
    QNET_RELAY_DATA = 0x02,
    QNET_RELAY_END = 0x03,
    QNET_RELAY_CONNECTED = 0x04,
    QNET_RELAY_SENDME = 0x05,
    QNET_RELAY_DROP = 0x06,
    QNET_RELAY_RESOLVE = 0x07,
    QNET_RELAY_RESOLVED = 0x08
};

/* forward = okm[0:32], backward = okm[32:64] of
 * HKDF(salt "qnet-cell-v1", ikm = hop_key_material, info "layer keys", 64). */
qnet_status qnet_cell_layer_keys(const uint8_t *hop_key_material, size_t material_len,
                                 uint8_t forward[32], uint8_t backward[32]);

/* Pass-through layer: out = in XOR ChaCha20(key, nonce(counter)), any length.
 * `out` may equal `in`. */
qnet_status qnet_cell_xor(const uint8_t key[32], uint64_t counter, const uint8_t *in, size_t len,
                          uint8_t *out);
/* n_cells consecutive 2040-byte bodies, cell k under counter + k.  `out` may equal `in`.
 * COUNTER if counter + n_cells - 1 passes 2^64 - 1. */
qnet_status qnet_cell_xor_batch(const uint8_t key[32], uint64_t counter, const uint8_t *in,
                                size_t n_cells, uint8_t *out);

/* End layer: seal a 2024-byte plaintext into a 2040-byte body. */
qnet_status qnet_cell_seal(const uint8_t key[32], uint64_t counter, const uint8_t *plaintext,
                           size_t plaintext_len, uint8_t body_out[QNET_CELL_BODY_LEN]);
/* n_cells plaintexts of 2024 bytes into n_cells bodies of 2040 bytes (no overlap). */
qnet_status qnet_cell_seal_batch(const uint8_t key[32], uint64_t counter,
                                 const uint8_t *plaintexts, size_t n_cells, uint8_t *bodies_out);
/* End layer: open a body.  Errors: LENGTH (not 2040 bytes), TAG. */
qnet_status qnet_cell_open(const uint8_t key[32], uint64_t counter, const uint8_t *body,
                           size_t body_len, uint8_t plaintext_out[QNET_CELL_PLAINTEXT_LEN]);
/* Open n_cells bodies.  On TAG, *failed_index is the first cell that did not verify
 * (the plaintexts before it are valid); on OK it is set to n_cells. */
qnet_status qnet_cell_open_batch(const uint8_t key[32], uint64_t counter, const uint8_t *bodies,
                                 size_t n_cells, uint8_t *plaintexts_out, size_t *failed_index);

/* Link unit (spec/cells.md §1).  Decode errors, in order: LENGTH, COMMAND, HEADER.
 * The body is unit[8:2048]. */
qnet_status qnet_unit_encode(uint32_t circ_id, uint8_t command, const uint8_t *body,
                             size_t body_len, uint8_t out[QNET_UNIT_LEN]);
qnet_status qnet_unit_decode(const uint8_t *unit, size_t unit_len, uint32_t *circ_id,
                             uint8_t *command);

/* Relay-cell plaintext (spec/cells.md §2).  Decode errors, in order: LENGTH (size, or
 * length field above 2019), COMMAND, PADDING.  The data is plaintext[5 : 5 + *data_len]. */
qnet_status qnet_relay_cell_encode(uint8_t relay_command, uint16_t stream_id, const uint8_t *data,
                                   size_t data_len, uint8_t out[QNET_CELL_PLAINTEXT_LEN]);
qnet_status qnet_relay_cell_decode(const uint8_t *plaintext, size_t plaintext_len,
                                   uint8_t *relay_command, uint16_t *stream_id, size_t *data_len);

/* ---------------------------------------------------------------- HTX frames (spec/htx.md §3-§4) */

#define QNET_HTX_SECRET_LEN 32
#define QNET_HTX_KEY_LEN 32
#define QNET_HTX_NONCE_LEN 12
#define QNET_HTX_HEADER_LEN 10
#define QNET_HTX_TAG_LEN 16
#define QNET_HTX_MAX_FRAME 16384
#define QNET_HTX_MIN_LEN 23
#define QNET_HTX_MAX_LEN 16381
#define QNET_HTX_MAX_PAYLOAD 16358
#define QNET_HTX_MAX_STREAM_DATA 16347

enum {
    QNET_FRAME_STREAM = 0x00,
    QNET_FRAME_WINDOW_UPDATE = 0x01,
    QNET_FRAME_PING = 0x02,
    QNET_FRAME_KEY_UPDATE = 0x03,
    QNET_FRAME_CLOSE = 0x04
};

/* The keys of one direction under one traffic secret (secret material: wipe it). */
typedef struct qnet_htx_keys {
    uint8_t secret[QNET_HTX_SECRET_LEN];
    uint8_t key[QNET_HTX_KEY_LEN];
    uint8_t nonce_salt[QNET_HTX_NONCE_LEN];
    uint64_t generation; /* KEY_UPDATEs so far */
} qnet_htx_keys;

/* HKDF-Expand-SHA256(secret, "betanet " || label, out_len); out_len <= 8160. */
qnet_status qnet_htx_expand_label(const uint8_t *secret, size_t secret_len, const char *label,
                                  size_t label_len, uint8_t *out, size_t out_len);
/* K0 = HKDF-Extract(32 zero bytes, session_secret); client from TS_c, server from TS_s.
 * k0_out may be NULL. */
qnet_status qnet_htx_session_keys(const uint8_t session_secret[32], uint8_t *k0_out,
                                  qnet_htx_keys *client_out, qnet_htx_keys *server_out);
/* key and nonce_salt of a traffic secret. */
qnet_status qnet_htx_keys_from_secret(const uint8_t secret[32], uint64_t generation,
                                      qnet_htx_keys *out);
/* The keys after a KEY_UPDATE: secret Expand-Label(TS, "next", 32), generation + 1.
 * `out` may equal `cur`. */
qnet_status qnet_htx_keys_next(const qnet_htx_keys *cur, qnet_htx_keys *out);
/* nonce = nonce_salt XOR (counter as u64 LE || 4 zero bytes). */
qnet_status qnet_htx_nonce(const uint8_t nonce_salt[12], uint64_t counter, uint8_t out[12]);

/* Seal one frame: header (len, type, stream_id, ext = 0) then the AEAD of the payload
 * with the 10 header bytes as AD.  The frame is 10 + payload_len + 16 bytes; the payload
 * is at most QNET_HTX_MAX_PAYLOAD.  The payload layout is the caller's (qnet_htx_frame_open
 * checks it on the way in). */
qnet_status qnet_htx_frame_seal(const qnet_htx_keys *keys, uint64_t counter, uint8_t type,
                                uint32_t stream_id, const uint8_t *payload, size_t payload_len,
                                uint8_t *out, size_t out_cap, size_t *out_len);

/* How many bytes the frame at the start of `buf` takes (len + 3).  NEED_MORE if fewer
 * than 3 bytes are there; LENGTH if len is outside [23, 16381]. */
qnet_status qnet_htx_frame_size(const uint8_t *buf, size_t buf_len, size_t *frame_len);

/* An opened frame.  The payload was written to the caller's buffer; the parsed fields
 * that apply to the type are set, the others are zero. */
typedef struct qnet_htx_frame {
    uint8_t type;
    uint32_t stream_id;
    size_t payload_len;
    size_t consumed;       /* bytes of input the frame took (len + 3)           */
    uint8_t fin;           /* STREAM                                            */
    uint64_t offset;       /* STREAM                                            */
    size_t data_offset;    /* STREAM: data at payload[data_offset .. + data_len] */
    size_t data_len;       /* STREAM data / CLOSE reason length                 */
    uint8_t scope;         /* WINDOW_UPDATE                                     */
    uint32_t credit;       /* WINDOW_UPDATE                                     */
    uint16_t close_code;   /* CLOSE: reason at payload[4 .. 4 + data_len]       */
} qnet_htx_frame;

/* Open the frame at the start of `wire` (spec/htx.md §4.3 order): LENGTH or NEED_MORE
 * from the length field, then TAG, then EXT, FRAME_TYPE, STREAM_ID, PAYLOAD.  Trailing
 * bytes after the frame are left alone (frame->consumed says where the next begins).
 * payload_out needs len - 23 bytes (at most QNET_HTX_MAX_PAYLOAD). */
qnet_status qnet_htx_frame_open(const qnet_htx_keys *keys, uint64_t counter, const uint8_t *wire,
                                size_t wire_len, uint8_t *payload_out, size_t payload_cap,
                                qnet_htx_frame *frame);

/* ---------------------------------------------------------------- tickets (spec/htx-tickets.md) */

#define QNET_TICKET_VERSION 1
#define QNET_TICKET_NONCE_LEN 16
#define QNET_TICKET_LEN 32
#define QNET_TICKET_FIXED_LEN 82
#define QNET_TICKET_MAX_PAD 255
#define QNET_TICKET_MAX_WIRE 337
#define QNET_TICKET_MAX_CARRIER 512

/* A server ticket key (secret: wipe it). */
typedef struct qnet_ticket_key {
    uint8_t key_id;
    uint8_t private_key[32];
    uint8_t public_key[32];
} qnet_ticket_key;

/* A decoded ticket wire value. */
typedef struct qnet_ticket {
    uint8_t version;
    uint8_t client_public[32];
    uint8_t key_id;
    uint8_t nonce[QNET_TICKET_NONCE_LEN];
    uint8_t ticket[QNET_TICKET_LEN];
    uint8_t padding[QNET_TICKET_MAX_PAD];
    size_t padding_len;
} qnet_ticket;

/* The padding length a client derives from its one-byte draw p: 8 + (p mod 64). */
size_t qnet_ticket_padding_len(uint8_t p);

/* Build a ticket (spec/htx-tickets.md §3) for `hour` = floor(now / 3600).
 *   ephemeral (32), nonce (16): the draws, NULL for random
 *   padding, padding_len: 0..255 bytes (a client uses qnet_ticket_padding_len(p));
 *                         NULL padding with padding_len > 0 draws it at random
 *   wire_out (may be NULL), carrier_out (may be NULL): the wire bytes and the
 *   base64url carrier text (NUL-terminated; carrier_cap includes the NUL).
 * Errors: ARG, BUFFER, POINT (server key gives an all-zero secret). */
qnet_status qnet_ticket_build(const uint8_t server_public[32], uint8_t key_id, uint64_t hour,
                              const uint8_t *ephemeral, const uint8_t *nonce,
                              const uint8_t *padding, size_t padding_len, uint8_t *wire_out,
                              size_t wire_cap, size_t *wire_len, char *carrier_out,
                              size_t carrier_cap, size_t *carrier_len);

/* The derivation itself: HKDF(shared, "qnet-htx ticket salt v1", info, 32). */
qnet_status qnet_ticket_derive(const uint8_t shared[32], uint64_t hour, uint8_t key_id,
                               const uint8_t server_public[32], const uint8_t client_public[32],
                               const uint8_t nonce[16], const uint8_t *padding,
                               size_t padding_len, uint8_t out[32]);

/* Decode a carrier value (the text after "session=" / "token=").  Errors, in order:
 * MISSING (empty), ENCODING (over 512 chars, not canonical unpadded base64url, or a
 * decoded size outside 82..337), VERSION. */
qnet_status qnet_ticket_parse(const char *carrier, size_t carrier_len, qnet_ticket *out);

/* The crypto part of a server's check (§4): find the key by id (UNKNOWN_KEY), X25519
 * with the client key (TICKET if small-order), derive and compare in constant time for
 * every hour of server_hour +- skew_hours (OK, *ticket_hour set), else the hours
 * +-(skew+1 .. skew+stale_hours) (STALE), else TICKET.  The spec's server uses
 * skew_hours = stale_hours = 1.  Rate limits and the replay set, keyed by
 * (client_public, *ticket_hour), stay with the caller. */
qnet_status qnet_ticket_verify(const qnet_ticket *ticket, const qnet_ticket_key *keys,
                               size_t n_keys, uint64_t server_hour, unsigned skew_hours,
                               unsigned stale_hours, uint64_t *ticket_hour);

/* ---------------------------------------------------------------- directory (spec/directory.md) */

#define QNET_DIR_ED25519_PUBLIC_LEN 32
#define QNET_DIR_ED25519_SIG_LEN 64
#define QNET_DIR_MLDSA65_PUBLIC_LEN 1952
#define QNET_DIR_MLDSA65_SIG_LEN 3309
/* Signing contexts: ASCII label and one NUL (sizeof - 1 == the context's length). */
#define QNET_DIR_CONTEXT_DESCRIPTOR "qnet-dir-v1 descriptor\0"
#define QNET_DIR_CONTEXT_VOTE "qnet-dir-v1 vote\0"
#define QNET_DIR_CONTEXT_CONSENSUS "qnet-dir-v1 consensus\0"

/* node_id = BLAKE2b-256(key = "qnet-dir-v1 node-id" || 13 zero bytes,
 *                       ed25519_public || mldsa65_public). */
qnet_status qnet_dir_node_id(const uint8_t ed25519_public[32], const uint8_t *mldsa65_public,
                             size_t mldsa65_len, uint8_t out[32]);

/* The three fields of a signed envelope (pointers into the caller's buffer). */
typedef struct qnet_dir_envelope {
    const uint8_t *body;
    size_t body_len;
    const uint8_t *sig_ed25519; /* 64 bytes   */
    const uint8_t *sig_mldsa65; /* 3309 bytes */
} qnet_dir_envelope;

/* Split a descriptor / vote envelope: a deterministic-CBOR map with exactly the keys
 * "body", "sig_ed25519", "sig_mldsa65" (byte strings, shortest-form lengths, canonical
 * key order, no trailing bytes).  MALFORMED otherwise, LENGTH for a signature of the
 * wrong size.  The body itself is not decoded. */
qnet_status qnet_dir_envelope_split(const uint8_t *envelope, size_t envelope_len,
                                    qnet_dir_envelope *out);

/* Ed25519 check of sig over context || body (spec/directory.md §4).  The context must
 * be one NUL-terminated label (MALFORMED otherwise).  The message is assembled in
 * `scratch` (at least context_len + body_len bytes); with scratch NULL the function
 * allocates it (BUFFER if that fails).  Returns OK or SIGNATURE.  The ML-DSA-65 half is
 * not in this library: a verifier must check both. */
qnet_status qnet_dir_verify_ed25519(const uint8_t public_key[32], const uint8_t *context,
                                    size_t context_len, const uint8_t *body, size_t body_len,
                                    const uint8_t sig[64], uint8_t *scratch, size_t scratch_len);

#ifdef __cplusplus
}
#endif

#endif /* QNET_H */
