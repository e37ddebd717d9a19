"""The one door to cryptographic primitives.

Two layers, named by danger, as in ``cryptography``:

* ``qnet.crypto.primitives`` — raw X25519, Ed25519, ChaCha20, ChaCha20-Poly1305,
  HKDF-SHA256, keyed BLAKE2b, HMAC-SHA256, ML-KEM-768, ML-DSA-65, checked at entry;
* ``qnet.crypto.lioness`` — the Lioness wide-block construction;
* ``qnet.crypto.accel`` — the per-hop hot path (Cython or pure Python, same bytes).

Nothing here knows about sockets or packet layouts beyond sizes.
"""

from qnet.crypto.lioness import lioness_decrypt, lioness_encrypt
from qnet.crypto.primitives import (
    MLKEM768Key,
    X25519Key,
    aead_open,
    aead_seal,
    chacha20_stream,
    chacha20_xor,
    ct_equal,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hmac_sha256,
    keyed_hash,
    mldsa65_public,
    mldsa65_sign,
    mldsa65_verify,
    mlkem768_encapsulate,
    random_bytes,
    x25519,
    x25519_public,
)

__all__ = [
    "MLKEM768Key",
    "X25519Key",
    "aead_open",
    "aead_seal",
    "chacha20_stream",
    "chacha20_xor",
    "ct_equal",
    "ed25519_public",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "keyed_hash",
    "lioness_decrypt",
    "lioness_encrypt",
    "mldsa65_public",
    "mldsa65_sign",
    "mldsa65_verify",
    "mlkem768_encapsulate",
    "random_bytes",
    "x25519",
    "x25519_public",
]
