"""The hazmat layer: thin, checked wrappers over ``cryptography`` and ``hashlib``.

Every other QNet module reaches primitives through ``qnet.crypto``. Inputs are
checked for type and exact length at the door; failures raise
``qnet.errors.CryptoError`` (``AuthenticationError`` for a failed open or
verify, with no detail).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as _x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from qnet.errors import AuthenticationError, CryptoError

KEY_LEN: Final = 32
NONCE_LEN: Final = 12
AEAD_TAG_LEN: Final = 16
X25519_LEN: Final = 32
ED25519_SIG_LEN: Final = 64
MLKEM768_PUBLIC_LEN: Final = 1184
MLKEM768_CIPHERTEXT_LEN: Final = 1088
MLKEM_SEED_LEN: Final = 64
MLDSA_SEED_LEN: Final = 32
ZERO_NONCE: Final = bytes(NONCE_LEN)


def _need(name: str, value: object, length: int | None = None) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CryptoError(f"{name} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if length is not None and len(data) != length:
        raise CryptoError(f"{name} must be {length} bytes, got {len(data)}")
    return data


# --- randomness and comparison ---------------------------------------------------


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    if n < 0:
        raise CryptoError("n must be non-negative")
    return os.urandom(n)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality for secrets (time depends only on the lengths)."""
    return hmac.compare_digest(a, b)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """XOR of two equal-length strings (a whole-int XOR: fast in CPython)."""
    if len(a) != len(b):
        raise CryptoError("xor_bytes needs equal lengths")
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


# --- X25519 ---------------------------------------------------------------------


class X25519Key:
    """An X25519 private key held as a ready object.

    Building the object costs a full scalar multiplication (it derives the public
    key), so long-lived keys are built once and reused for every ``exchange``.
    """

    __slots__ = ("_key", "private_bytes", "public_bytes")

    def __init__(self, private: bytes) -> None:
        self.private_bytes = _need("private", private, X25519_LEN)
        self._key = _x25519.X25519PrivateKey.from_private_bytes(self.private_bytes)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Key:
        return cls(random_bytes(X25519_LEN))

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519(self, peer). Raises ``CryptoError`` for a small-order peer key."""
        peer = _x25519.X25519PublicKey.from_public_bytes(
            _need("peer_public", peer_public, X25519_LEN)
        )
        try:
            return self._key.exchange(peer)
        except ValueError as exc:  # all-zero shared secret
            raise CryptoError("small-order public key") from exc


def x25519_public(private: bytes) -> bytes:
    """X25519(private, 9): the public key for a (clamped) scalar."""
    return X25519Key(private).public_bytes


def x25519(private: bytes, peer_public: bytes) -> bytes:
    """One-shot X25519; prefer ``X25519Key`` for keys used more than once."""
    return X25519Key(private).exchange(peer_public)


# --- Ed25519 --------------------------------------------------------------------


def ed25519_public(seed: bytes) -> bytes:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_need("seed", seed, 32))
    return key.public_key().public_bytes_raw()


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_need("seed", seed, 32))
    return key.sign(_need("message", message))


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise ``AuthenticationError`` unless ``signature`` is valid."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(_need("public", public, 32))
        key.verify(_need("signature", signature, ED25519_SIG_LEN), _need("message", message))
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("invalid signature") from exc


# --- ChaCha20, ChaCha20-Poly1305 ------------------------------------------------


def chacha20_xor(key: bytes, nonce: bytes, data: bytes, counter: int = 0) -> bytes:
    """XOR ``data`` with the RFC 8439 ChaCha20 keystream (12-byte nonce, 32-bit counter)."""
    key = _need("key", key, KEY_LEN)
    nonce = _need("nonce", nonce, NONCE_LEN)
    if not 0 <= counter < 2**32:
        raise CryptoError("counter must fit in 32 bits")
    full_nonce = counter.to_bytes(4, "little") + nonce
    enc = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    return enc.update(bytes(data))


def chacha20_stream(key: bytes, length: int, nonce: bytes = ZERO_NONCE) -> bytes:
    """The first ``length`` keystream bytes (block counter 0)."""
    return chacha20_xor(key, nonce, bytes(length))


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
    """ChaCha20-Poly1305 (RFC 8439): ciphertext ‖ 16-byte tag."""
    return AeadKey(key).seal(nonce, bytes(plaintext), bytes(ad))


def aead_open(key: bytes, nonce: bytes, sealed: bytes, ad: bytes = b"") -> bytes:
    """Inverse of ``aead_seal``; raises ``AuthenticationError`` on any failure."""
    return AeadKey(key).open(nonce, bytes(sealed), bytes(ad))


class AeadKey:
    """``aead_seal`` / ``aead_open`` under one key, set up once for many messages
    (a hot path: a stream of frames). Messages may be any bytes-like object."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(_need("key", key, KEY_LEN))

    def seal(self, nonce: bytes, plaintext: bytes | memoryview, ad: bytes = b"") -> bytes:
        return self._aead.encrypt(_need("nonce", nonce, NONCE_LEN), plaintext, ad)

    def open(self, nonce: bytes, sealed: bytes | memoryview, ad: bytes = b"") -> bytes:
        """Raises ``AuthenticationError`` on any failure."""
        try:
            return self._aead.decrypt(_need("nonce", nonce, NONCE_LEN), sealed, ad)
        except InvalidTag as exc:
            raise AuthenticationError("open failed") from exc


# --- hashing and key derivation ---------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand."""
    if not 0 < length <= 255 * 32:
        raise CryptoError("length out of range for HKDF-SHA256")
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=bytes(salt), info=bytes(info))
    return kdf.derive(bytes(ikm))


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract-SHA256 (RFC 5869 §2.2): the 32-byte PRK, HMAC(salt, ikm)."""
    return hmac.new(_need("salt", salt), _need("ikm", ikm), hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA256 (RFC 5869 §2.3) of a PRK of at least 32 bytes."""
    if not 0 < length <= 255 * 32:
        raise CryptoError("length out of range for HKDF-SHA256")
    prk = _need("prk", prk)
    if len(prk) < 32:
        raise CryptoError("prk must be at least 32 bytes")
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=bytes(info)).derive(prk)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(bytes(key), bytes(data), hashlib.sha256).digest()


def keyed_hash(key: bytes, data: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE2b (RFC 7693) with a ``size``-byte digest (16 … 64)."""
    if not 16 <= size <= 64:
        raise CryptoError("digest size must be 16..64")
    key = _need("key", key, KEY_LEN)
    return hashlib.blake2b(bytes(data), key=key, digest_size=size).digest()


# --- post-quantum ------------------------------------------------------------------


class MLKEM768Key:
    """An ML-KEM-768 decapsulation key, built from a 64-byte seed."""

    __slots__ = ("_key", "public_bytes", "seed")

    def __init__(self, seed: bytes) -> None:
        self.seed = _need("seed", seed, MLKEM_SEED_LEN)
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.seed)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> MLKEM768Key:
        return cls(random_bytes(MLKEM_SEED_LEN))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return self._key.decapsulate(_need("ciphertext", ciphertext, MLKEM768_CIPHERTEXT_LEN))
        except ValueError as exc:
            raise CryptoError("bad ML-KEM ciphertext") from exc


def mlkem768_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Returns ``(ciphertext, shared_secret)`` for an ML-KEM-768 public key."""
    try:
        pub = mlkem.MLKEM768PublicKey.from_public_bytes(
            _need("public", public, MLKEM768_PUBLIC_LEN)
        )
    except ValueError as exc:
        raise CryptoError("bad ML-KEM public key") from exc
    shared, ciphertext = pub.encapsulate()
    return ciphertext, shared


def mldsa65_public(seed: bytes) -> bytes:
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(_need("seed", seed, MLDSA_SEED_LEN))
    return key.public_key().public_bytes_raw()


def mldsa65_sign(seed: bytes, message: bytes) -> bytes:
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(_need("seed", seed, MLDSA_SEED_LEN))
    return key.sign(_need("message", message))


def mldsa65_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise ``AuthenticationError`` unless ``signature`` is valid."""
    try:
        key = mldsa.MLDSA65PublicKey.from_public_bytes(_need("public", public))
        key.verify(_need("signature", signature), _need("message", message))
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("invalid signature") from exc
