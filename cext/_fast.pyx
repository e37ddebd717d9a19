# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython + libsodium implementation of the per-hop hot path (``qnet._fast``).

Same API and same bytes as the pure-Python reference ``qnet.crypto.hopcrypto``;
``qnet.crypto.accel`` picks one. Only libsodium primitives are used (X25519,
HMAC-SHA256 for HKDF, keyed BLAKE2b, raw ChaCha20, ChaCha20-Poly1305); nothing is
implemented by hand.

Argument handling mirrors the reference: keys go through the same checks as
``qnet.crypto.primitives._need`` (bytes / bytearray / memoryview, exact length,
else ``CryptoError``), data arguments are taken as ``bytes(x)``, and every check
happens in the same order as in the reference. Single packets and cells are
snapshotted as bytes with the GIL held (``bytes`` objects are used in place);
the cell batches read a contiguous buffer in place under a buffer export (see
``_acquire``) instead of copying half a megabyte. The per-packet / per-cell work
runs in ``nogil`` C functions; every batch releases the GIL around its loop.

Only 1-byte-item buffers are meant (bytes, bytearray, memoryview of those):
a buffer whose ``len()`` is not its byte length (e.g. ``memoryview(array('H'))``)
is taken as its raw bytes, where the reference would slice by items.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.mem cimport PyMem_RawMalloc, PyMem_RawFree

from qnet.errors import CryptoError


cdef extern from "sodium.h" nogil:
    int sodium_init()
    void sodium_memzero(void *pnt, size_t length)
    int crypto_verify_16(const unsigned char *x, const unsigned char *y)

    int crypto_scalarmult(unsigned char *q, const unsigned char *n, const unsigned char *p)

    ctypedef struct crypto_auth_hmacsha256_state:
        pass
    int crypto_auth_hmacsha256_init(crypto_auth_hmacsha256_state *state,
                                    const unsigned char *key, size_t keylen)
    int crypto_auth_hmacsha256_update(crypto_auth_hmacsha256_state *state,
                                      const unsigned char *inp, unsigned long long inlen)
    int crypto_auth_hmacsha256_final(crypto_auth_hmacsha256_state *state, unsigned char *out)

    int crypto_generichash(unsigned char *out, size_t outlen,
                           const unsigned char *inp, unsigned long long inlen,
                           const unsigned char *key, size_t keylen)

    int crypto_stream_chacha20_ietf_xor_ic(unsigned char *c, const unsigned char *m,
                                           unsigned long long mlen, const unsigned char *n,
                                           uint32_t ic, const unsigned char *k)

    int crypto_aead_chacha20poly1305_ietf_encrypt(
        unsigned char *c, unsigned long long *clen_p,
        const unsigned char *m, unsigned long long mlen,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *nsec, const unsigned char *npub, const unsigned char *k)
    int crypto_aead_chacha20poly1305_ietf_decrypt(
        unsigned char *m, unsigned long long *mlen_p, unsigned char *nsec,
        const unsigned char *c, unsigned long long clen,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *npub, const unsigned char *k)


# --- sizes (qnet/constants.py) -----------------------------------------------------

cdef enum:
    KEY_LEN = 32
    NONCE_LEN = 12
    PACKET_LEN = 2040
    BODY_LEN = 2040
    ALPHA_LEN = 32
    GAMMA_LEN = 16
    BETA_LEN = 480
    SLOT_LEN = 96
    HEADER_LEN = 528
    PAYLOAD_LEN = 1512
    HOP_OKM_LEN = 240
    OKM_BLOCKS = 8                  # ceil(240 / 32)
    TAG_SECRET_LEN = 48             # replay_tag (16) + hop_secret (32)
    ROUTING_LEN = 576               # BETA_LEN + SLOT_LEN
    UNWRAP_OUT_LEN = 2136           # 48 + 576 + 1512
    CELL_PLAINTEXT_LEN = 2024
    LIONESS_KEYS_LEN = 128
    LIONESS_LEFT = 32
    NOGIL_MIN = 8192                # single calls release the GIL from this many bytes

# C-level status codes (same values as the Python constants below).
cdef enum:
    S_OK = 0
    S_ERR_LENGTH = 1
    S_ERR_POINT = 2
    S_ERR_MAC = 3
    S_PENDING = -2                  # copied in, not yet processed
    S_NEED_PUBLIC = -3              # reached HKDF but node_public is not a buffer

OK = 0
ERR_LENGTH = 1
ERR_POINT = 2
ERR_MAC = 3

BACKEND = "cython"

cdef unsigned char ZERO_NONCE[12]          # static storage: all zero

# HMAC-SHA256 keyed with the constant HKDF salt "qnet-sphinx-v1": the extract step
# of every hop starts from a copy (the salt is a constant, not key material).
cdef crypto_auth_hmacsha256_state SALT_STATE

if sodium_init() < 0:
    raise ImportError("qnet._fast: sodium_init() failed")
crypto_auth_hmacsha256_init(&SALT_STATE, <const unsigned char *>b"qnet-sphinx-v1", 14)


# --- nogil cores ---------------------------------------------------------------------

cdef inline void xor32(unsigned char *dst, const unsigned char *a,
                       const unsigned char *b) noexcept nogil:
    cdef int i
    for i in range(32):
        dst[i] = a[i] ^ b[i]


cdef inline void make_nonce(unsigned char *nonce, uint64_t counter) noexcept nogil:
    """counter as 64-bit little-endian ‖ 4 zero bytes (spec/cells.md §3)."""
    cdef int i
    for i in range(8):
        nonce[i] = <unsigned char>((counter >> (8 * i)) & 0xFF)
    nonce[8] = 0
    nonce[9] = 0
    nonce[10] = 0
    nonce[11] = 0


cdef void sphinx_okm(unsigned char *okm, const unsigned char *shared,
                     const unsigned char *alpha, const unsigned char *pub,
                     size_t publen) noexcept nogil:
    """HKDF-SHA256(salt, ikm=shared, info=alpha ‖ pub, L=240) into okm[0:256]."""
    cdef crypto_auth_hmacsha256_state st
    cdef crypto_auth_hmacsha256_state base
    cdef unsigned char prk[32]
    cdef unsigned char ctr
    cdef int i
    # extract: PRK = HMAC(salt, ikm)
    memcpy(&st, &SALT_STATE, sizeof(crypto_auth_hmacsha256_state))
    crypto_auth_hmacsha256_update(&st, shared, 32)
    crypto_auth_hmacsha256_final(&st, prk)
    # expand: T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i)
    crypto_auth_hmacsha256_init(&base, prk, 32)
    for i in range(OKM_BLOCKS):
        memcpy(&st, &base, sizeof(crypto_auth_hmacsha256_state))
        if i:
            crypto_auth_hmacsha256_update(&st, okm + 32 * (i - 1), 32)
        crypto_auth_hmacsha256_update(&st, alpha, ALPHA_LEN)
        crypto_auth_hmacsha256_update(&st, pub, publen)
        ctr = <unsigned char>(i + 1)
        crypto_auth_hmacsha256_update(&st, &ctr, 1)
        crypto_auth_hmacsha256_final(&st, okm + 32 * i)
    sodium_memzero(prk, sizeof(prk))
    sodium_memzero(&st, sizeof(crypto_auth_hmacsha256_state))
    sodium_memzero(&base, sizeof(crypto_auth_hmacsha256_state))


cdef void lioness_encrypt_c(const unsigned char *keys, unsigned char *blk,
                            size_t n) noexcept nogil:
    """Lioness-encrypt blk[0:n] in place (n >= 33), keys = k1 ‖ k2 ‖ k3 ‖ k4."""
    cdef unsigned char k[32]
    cdef unsigned char h[32]
    cdef unsigned char *right = blk + LIONESS_LEFT
    cdef size_t rlen = n - LIONESS_LEFT
    xor32(k, blk, keys)                                           # R ^= S(L ^ k1)
    crypto_stream_chacha20_ietf_xor_ic(right, right, rlen, ZERO_NONCE, 0, k)
    crypto_generichash(h, 32, right, rlen, keys + 32, 32)         # L ^= H(k2, R)
    xor32(blk, blk, h)
    xor32(k, blk, keys + 64)                                      # R ^= S(L ^ k3)
    crypto_stream_chacha20_ietf_xor_ic(right, right, rlen, ZERO_NONCE, 0, k)
    crypto_generichash(h, 32, right, rlen, keys + 96, 32)         # L ^= H(k4, R)
    xor32(blk, blk, h)
    sodium_memzero(k, sizeof(k))
    sodium_memzero(h, sizeof(h))


cdef void lioness_decrypt_c(const unsigned char *keys, unsigned char *blk,
                            size_t n) noexcept nogil:
    """Inverse of lioness_encrypt_c, in place."""
    cdef unsigned char k[32]
    cdef unsigned char h[32]
    cdef unsigned char *right = blk + LIONESS_LEFT
    cdef size_t rlen = n - LIONESS_LEFT
    crypto_generichash(h, 32, right, rlen, keys + 96, 32)         # L ^= H(k4, R)
    xor32(blk, blk, h)
    xor32(k, blk, keys + 64)                                      # R ^= S(L ^ k3)
    crypto_stream_chacha20_ietf_xor_ic(right, right, rlen, ZERO_NONCE, 0, k)
    crypto_generichash(h, 32, right, rlen, keys + 32, 32)         # L ^= H(k2, R)
    xor32(blk, blk, h)
    xor32(k, blk, keys)                                           # R ^= S(L ^ k1)
    crypto_stream_chacha20_ietf_xor_ic(right, right, rlen, ZERO_NONCE, 0, k)
    sodium_memzero(k, sizeof(k))
    sodium_memzero(h, sizeof(h))


cdef int unwrap_c(const unsigned char *sk, const unsigned char *pub, size_t publen,
                  const unsigned char *pkt, unsigned char *out) noexcept nogil:
    """spec/sphinx.md §7 steps 2-8 on one 2040-byte packet; out gets 2136 bytes on S_OK.

    pub == NULL means node_public is not a buffer: report S_NEED_PUBLIC at the
    point where the reference would build ``alpha + node_public``.
    """
    cdef unsigned char shared[32]
    cdef unsigned char okm[256]
    cdef unsigned char mac[16]
    cdef int status = S_OK
    cdef const unsigned char *alpha = pkt
    cdef const unsigned char *gamma = pkt + ALPHA_LEN
    cdef const unsigned char *beta = pkt + ALPHA_LEN + GAMMA_LEN
    cdef const unsigned char *delta = pkt + HEADER_LEN
    if crypto_scalarmult(shared, sk, alpha) != 0:                 # all-zero s
        sodium_memzero(shared, sizeof(shared))
        return S_ERR_POINT
    if pub == NULL:
        sodium_memzero(shared, sizeof(shared))
        return S_NEED_PUBLIC
    sphinx_okm(okm, shared, alpha, pub, publen)
    sodium_memzero(shared, sizeof(shared))
    crypto_generichash(mac, GAMMA_LEN, beta, BETA_LEN, okm + 32, 32)
    if crypto_verify_16(mac, gamma) != 0:
        status = S_ERR_MAC
    else:
        memcpy(out, okm + 192, TAG_SECRET_LEN)                    # replay_tag ‖ hop_secret
        memcpy(out + TAG_SECRET_LEN, beta, BETA_LEN)              # (beta ‖ 0^96) ^ S(k, 576)
        memset(out + TAG_SECRET_LEN + BETA_LEN, 0, SLOT_LEN)
        crypto_stream_chacha20_ietf_xor_ic(out + TAG_SECRET_LEN, out + TAG_SECRET_LEN,
                                           ROUTING_LEN, ZERO_NONCE, 0, okm)
        memcpy(out + TAG_SECRET_LEN + ROUTING_LEN, delta, PAYLOAD_LEN)
        lioness_decrypt_c(okm + 64, out + TAG_SECRET_LEN + ROUTING_LEN, PAYLOAD_LEN)
    sodium_memzero(okm, sizeof(okm))
    sodium_memzero(mac, sizeof(mac))
    return status


cdef void xor_cells_c(const unsigned char *key, uint64_t counter, const unsigned char *inp,
                      unsigned char *out, size_t ncells) noexcept nogil:
    cdef unsigned char nonce[12]
    cdef size_t k
    for k in range(ncells):
        make_nonce(nonce, counter + k)
        crypto_stream_chacha20_ietf_xor_ic(out + k * BODY_LEN, inp + k * BODY_LEN, BODY_LEN,
                                           nonce, 0, key)


cdef void seal_cells_c(const unsigned char *key, uint64_t counter, const unsigned char *inp,
                       unsigned char *out, size_t ncells) noexcept nogil:
    cdef unsigned char nonce[12]
    cdef size_t k
    for k in range(ncells):
        make_nonce(nonce, counter + k)
        crypto_aead_chacha20poly1305_ietf_encrypt(out + k * BODY_LEN, NULL,
                                                  inp + k * CELL_PLAINTEXT_LEN,
                                                  CELL_PLAINTEXT_LEN, NULL, 0, NULL, nonce, key)


cdef Py_ssize_t open_cells_c(const unsigned char *key, uint64_t counter,
                             const unsigned char *inp, unsigned char *out,
                             size_t ncells) noexcept nogil:
    """Open consecutive cells; the index of the first failure, or -1."""
    cdef unsigned char nonce[12]
    cdef size_t k
    for k in range(ncells):
        make_nonce(nonce, counter + k)
        if crypto_aead_chacha20poly1305_ietf_decrypt(out + k * CELL_PLAINTEXT_LEN, NULL, NULL,
                                                     inp + k * BODY_LEN, BODY_LEN,
                                                     NULL, 0, nonce, key) != 0:
            return <Py_ssize_t>k
    return -1


# --- argument handling (mirrors the reference) ---------------------------------------

cdef inline bytes _snap(object value):
    """``bytes(value)`` as the reference takes it; ``bytes`` objects are used as is."""
    if type(value) is bytes:
        return <bytes>value
    return bytes(value)


cdef bytes _need(str name, object value, Py_ssize_t length):
    """Same checks as ``qnet.crypto.primitives._need``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CryptoError(f"{name} must be bytes, not {type(value).__name__}")
    cdef bytes data = _snap(value)
    if PyBytes_GET_SIZE(data) != length:
        raise CryptoError(f"{name} must be {length} bytes, got {PyBytes_GET_SIZE(data)}")
    return data


cdef uint64_t _counter(object counter) except? 0xFFFFFFFFFFFFFFFF:
    """``counter`` checked as ``hopcrypto.cell_nonce`` does: an int in 0 … 2**64-1."""
    if not isinstance(counter, int):
        raise CryptoError(f"cell counter must be an int, not {type(counter).__name__}")
    if counter < 0 or counter > 0xFFFFFFFFFFFFFFFF:
        raise CryptoError("cell counter must be in 0 .. 2**64-1")
    return <uint64_t>counter


cdef inline Py_ssize_t _cells_in_range(uint64_t first, Py_ssize_t ncells) noexcept:
    """How many of the counters first, first + 1, … first + ncells - 1 fit in 64 bits."""
    cdef uint64_t room = 0xFFFFFFFFFFFFFFFFULL - first      # counters after the first
    if <uint64_t>(ncells - 1) <= room:
        return ncells
    return <Py_ssize_t>(room + 1)


cdef inline const unsigned char *_ptr(bytes b):
    return <const unsigned char *>PyBytes_AS_STRING(b)


cdef int _acquire(object obj, Py_buffer *view) except -1:
    """A view of ``bytes(obj)`` for the batch functions, without copying a
    contiguous buffer: the export pins the memory (a bytearray cannot be resized
    meanwhile), so the GIL can be released while reading it, as hashlib does.
    Anything else (a non-contiguous memoryview, an iterable of ints) is taken
    as ``bytes(obj)``, like the reference."""
    if PyObject_CheckBuffer(obj):
        try:
            PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
            return 0
        except BufferError:
            pass
    PyObject_GetBuffer(bytes(obj), view, PyBUF_SIMPLE)
    return 0


cdef bytes _public_snapshot(object node_public):
    """node_public as bytes if it is a buffer (as ``bytes + node_public`` needs), else None."""
    cdef Py_buffer view
    if type(node_public) is bytes:
        return <bytes>node_public
    try:
        PyObject_GetBuffer(node_public, &view, PyBUF_SIMPLE)
    except Exception:
        return None
    try:
        return PyBytes_FromStringAndSize(<const char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef _raise_public(object node_public):
    """Raise exactly what the reference's ``alpha + node_public`` raises."""
    bytes(ALPHA_LEN) + node_public
    raise TypeError(f"node_public must be a bytes-like object, not {type(node_public).__name__}")


# --- Sphinx --------------------------------------------------------------------------

def sphinx_unwrap(node_private, node_public, packet):
    """Peel one Sphinx layer: ``(OK, out)`` (2136 bytes) or ``(ERR_*, b"")``."""
    cdef bytes sk = _need("private", node_private, KEY_LEN)
    if len(packet) != PACKET_LEN:
        return ERR_LENGTH, b""
    cdef bytes pkt = _snap(packet)
    if PyBytes_GET_SIZE(pkt) != PACKET_LEN:         # only for multi-byte-item buffers
        return ERR_LENGTH, b""
    cdef bytes pub = _public_snapshot(node_public)
    cdef const unsigned char *pubp = NULL
    cdef size_t publen = 0
    if pub is not None:
        pubp = _ptr(pub)
        publen = <size_t>PyBytes_GET_SIZE(pub)
    cdef const unsigned char *skp = _ptr(sk)
    cdef const unsigned char *pp = _ptr(pkt)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, UNWRAP_OUT_LEN)
    cdef unsigned char *outp = <unsigned char *>PyBytes_AS_STRING(result)
    cdef int status
    with nogil:
        status = unwrap_c(skp, pubp, publen, pp, outp)
    if status == S_OK:
        return OK, result
    if status == S_NEED_PUBLIC:
        _raise_public(node_public)
    return status, b""


def sphinx_unwrap_batch(node_private, node_public, packets):
    """``sphinx_unwrap`` over many packets under one node key (GIL released).

    With the GIL held: check lengths, take each packet as immutable bytes and
    allocate each 2136-byte result object. Without it: unwrap every packet
    straight into its (not yet shared) result object. Only the small pointer and
    status arrays are malloc'd: no per-packet allocation in the loop and no
    large transient buffers (those cost page faults on every call).
    """
    cdef bytes sk = _need("private", node_private, KEY_LEN)
    cdef list seq = list(packets)
    cdef Py_ssize_t n = len(seq)
    cdef Py_ssize_t i
    cdef bytes pkt
    cdef bytes pub
    cdef const unsigned char *pubp = NULL
    cdef size_t publen = 0
    cdef const unsigned char *skp = _ptr(sk)
    cdef const unsigned char **inp = NULL
    cdef unsigned char **outp = NULL
    cdef int *status = NULL
    cdef bint need_public = False
    cdef list keep
    cdef list results
    if n == 0:
        return []
    pub = _public_snapshot(node_public)
    if pub is not None:
        pubp = _ptr(pub)
        publen = <size_t>PyBytes_GET_SIZE(pub)
    inp = <const unsigned char **>PyMem_RawMalloc(<size_t>n * sizeof(unsigned char *))
    outp = <unsigned char **>PyMem_RawMalloc(<size_t>n * sizeof(unsigned char *))
    status = <int *>PyMem_RawMalloc(<size_t>n * sizeof(int))
    try:
        if inp == NULL or outp == NULL or status == NULL:
            raise MemoryError()
        keep = [None] * n           # the input snapshots, then the result objects
        results = [None] * n
        # Same length checks as the reference, in order, with the GIL held.
        for i in range(n):
            p = seq[i]
            if len(p) != PACKET_LEN:
                status[i] = S_ERR_LENGTH
                continue
            pkt = _snap(p)
            if PyBytes_GET_SIZE(pkt) != PACKET_LEN:
                status[i] = S_ERR_LENGTH
                continue
            keep[i] = pkt
            inp[i] = _ptr(pkt)
            out = PyBytes_FromStringAndSize(NULL, UNWRAP_OUT_LEN)
            results[i] = out
            outp[i] = <unsigned char *>PyBytes_AS_STRING(out)
            status[i] = S_PENDING
        with nogil:
            for i in range(n):
                if status[i] == S_PENDING:
                    status[i] = unwrap_c(skp, pubp, publen, inp[i], outp[i])
                    if status[i] == S_NEED_PUBLIC:
                        need_public = True
                        break
        if need_public:
            _raise_public(node_public)
        for i in range(n):
            if status[i] == S_OK:
                results[i] = (OK, results[i])
            else:
                results[i] = (status[i], b"")
        return results
    finally:
        PyMem_RawFree(inp)
        PyMem_RawFree(outp)
        PyMem_RawFree(status)


# --- Lioness -------------------------------------------------------------------------

cdef bytes _lioness(object keys, object block, bint encrypt):
    cdef bytes kb = _snap(keys)
    cdef bytes bb = _snap(block)
    if PyBytes_GET_SIZE(kb) != LIONESS_KEYS_LEN:
        raise CryptoError(f"Lioness keys must be {LIONESS_KEYS_LEN} bytes, "
                          f"got {PyBytes_GET_SIZE(kb)}")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(bb)
    if n < LIONESS_LEFT + 1:
        raise CryptoError(f"Lioness block must be at least {LIONESS_LEFT + 1} bytes")
    cdef bytes out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(bb), n)
    cdef unsigned char *op = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *kp = _ptr(kb)
    if n >= NOGIL_MIN:
        with nogil:
            if encrypt:
                lioness_encrypt_c(kp, op, <size_t>n)
            else:
                lioness_decrypt_c(kp, op, <size_t>n)
    elif encrypt:
        lioness_encrypt_c(kp, op, <size_t>n)
    else:
        lioness_decrypt_c(kp, op, <size_t>n)
    return out


def lioness_encrypt_block(keys, block):
    """Lioness-encrypt one block (>= 33 bytes) with the 128-byte key k1 ‖ k2 ‖ k3 ‖ k4."""
    return _lioness(keys, block, True)


def lioness_decrypt_block(keys, block):
    """Inverse of ``lioness_encrypt_block``."""
    return _lioness(keys, block, False)


# --- relay cells ---------------------------------------------------------------------

def cell_xor(key, counter, body):
    """One pass-through layer over one body (any length)."""
    cdef uint64_t c = _counter(counter)
    cdef bytes kb = _need("key", key, KEY_LEN)
    cdef bytes data = _snap(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n == 0:
        return b""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char *op = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *dp = _ptr(data)
    cdef const unsigned char *kp = _ptr(kb)
    cdef unsigned char nonce[12]
    make_nonce(nonce, c)
    if n >= NOGIL_MIN:
        with nogil:
            crypto_stream_chacha20_ietf_xor_ic(op, dp, <unsigned long long>n, nonce, 0, kp)
    else:
        crypto_stream_chacha20_ietf_xor_ic(op, dp, <unsigned long long>n, nonce, 0, kp)
    return out


def cell_xor_batch(key, counter, bodies):
    """Pass-through layer over ``len(bodies) // 2040`` cells; cell k uses counter + k."""
    if len(bodies) % BODY_LEN:
        raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
    cdef Py_ssize_t ncells = len(bodies) // BODY_LEN
    if ncells == 0:
        return b""
    cdef uint64_t c = _counter(counter + 0)     # the reference's cell_nonce(counter + k), k = 0
    cdef bytes kb = _need("key", key, KEY_LEN)
    if _cells_in_range(c, ncells) < ncells:
        raise CryptoError("cell counter must be in 0 .. 2**64-1")
    cdef const unsigned char *kp = _ptr(kb)
    cdef bytes out
    cdef unsigned char *op
    cdef const unsigned char *dp
    cdef Py_buffer view
    _acquire(bodies, &view)
    try:
        if view.len != ncells * BODY_LEN:
            raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
        out = PyBytes_FromStringAndSize(NULL, ncells * BODY_LEN)
        op = <unsigned char *>PyBytes_AS_STRING(out)
        dp = <const unsigned char *>view.buf
        with nogil:
            xor_cells_c(kp, c, dp, op, <size_t>ncells)
    finally:
        PyBuffer_Release(&view)
    return out


def cell_seal(key, counter, plaintext):
    """End layer: AEAD-seal a 2024-byte plaintext into a 2040-byte body."""
    if len(plaintext) != CELL_PLAINTEXT_LEN:
        raise CryptoError(f"plaintext must be {CELL_PLAINTEXT_LEN} bytes")
    cdef uint64_t c = _counter(counter)
    cdef bytes kb = _need("key", key, KEY_LEN)
    cdef bytes data = _snap(plaintext)
    if PyBytes_GET_SIZE(data) != CELL_PLAINTEXT_LEN:
        raise CryptoError(f"plaintext must be {CELL_PLAINTEXT_LEN} bytes")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, BODY_LEN)
    seal_cells_c(_ptr(kb), c, _ptr(data), <unsigned char *>PyBytes_AS_STRING(out), 1)
    return out


def cell_seal_batch(key, counter, plaintexts):
    """End layer over ``len(plaintexts) // 2024`` consecutive cells (counter + k)."""
    if len(plaintexts) % CELL_PLAINTEXT_LEN:
        raise CryptoError(f"batch length must be a multiple of {CELL_PLAINTEXT_LEN}")
    cdef Py_ssize_t ncells = len(plaintexts) // CELL_PLAINTEXT_LEN
    if ncells == 0:
        return b""
    cdef uint64_t c = _counter(counter + 0)     # the reference's cell_nonce(counter + k), k = 0
    cdef bytes kb = _need("key", key, KEY_LEN)
    if _cells_in_range(c, ncells) < ncells:
        raise CryptoError("cell counter must be in 0 .. 2**64-1")
    cdef const unsigned char *kp = _ptr(kb)
    cdef bytes out
    cdef unsigned char *op
    cdef const unsigned char *dp
    cdef Py_buffer view
    _acquire(plaintexts, &view)
    try:
        if view.len != ncells * CELL_PLAINTEXT_LEN:
            raise CryptoError(f"batch length must be a multiple of {CELL_PLAINTEXT_LEN}")
        out = PyBytes_FromStringAndSize(NULL, ncells * BODY_LEN)
        op = <unsigned char *>PyBytes_AS_STRING(out)
        dp = <const unsigned char *>view.buf
        with nogil:
            seal_cells_c(kp, c, dp, op, <size_t>ncells)
    finally:
        PyBuffer_Release(&view)
    return out


def cell_open(key, counter, body):
    """End layer: open a 2040-byte body; ``None`` when the tag does not verify."""
    if len(body) != BODY_LEN:
        return None
    cdef uint64_t c = _counter(counter)
    cdef bytes kb = _need("key", key, KEY_LEN)
    cdef bytes data = _snap(body)
    if PyBytes_GET_SIZE(data) != BODY_LEN:
        return None
    cdef bytes out = PyBytes_FromStringAndSize(NULL, CELL_PLAINTEXT_LEN)
    if open_cells_c(_ptr(kb), c, _ptr(data), <unsigned char *>PyBytes_AS_STRING(out), 1) >= 0:
        return None
    return out


def cell_open_batch(key, counter, bodies):
    """Open consecutive cells: ``(plaintexts, failed)``, failed = first bad index or -1."""
    if len(bodies) % BODY_LEN:
        raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
    cdef Py_ssize_t ncells = len(bodies) // BODY_LEN
    if ncells == 0:
        return b"", -1
    cdef uint64_t c = _counter(counter + 0)     # the reference's cell_nonce(counter + k), k = 0
    cdef bytes kb = _need("key", key, KEY_LEN)
    # Like the reference, a counter past 2**64-1 is an error only if every cell
    # before it opened (the first failure ends the batch).
    cdef Py_ssize_t nvalid = _cells_in_range(c, ncells)
    cdef const unsigned char *kp = _ptr(kb)
    cdef bytes out
    cdef unsigned char *op
    cdef const unsigned char *dp
    cdef Py_ssize_t failed
    cdef Py_buffer view
    _acquire(bodies, &view)
    try:
        if view.len != ncells * BODY_LEN:
            raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
        out = PyBytes_FromStringAndSize(NULL, ncells * CELL_PLAINTEXT_LEN)
        op = <unsigned char *>PyBytes_AS_STRING(out)
        dp = <const unsigned char *>view.buf
        with nogil:
            failed = open_cells_c(kp, c, dp, op, <size_t>nvalid)
    finally:
        PyBuffer_Release(&view)
    if failed >= 0:
        return out[:failed * CELL_PLAINTEXT_LEN], failed
    if nvalid < ncells:
        raise CryptoError("cell counter must be in 0 .. 2**64-1")
    return out, -1
