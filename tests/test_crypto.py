"""The crypto door: published known answers and the error contract."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnet import crypto
from qnet.crypto import primitives as P
from qnet.errors import AuthenticationError, CryptoError

X = bytes.fromhex


def test_x25519_rfc7748() -> None:
    # RFC 7748 §6.1 Alice/Bob.
    a = X("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = X("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert (
        crypto.x25519_public(a).hex()
        == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert crypto.x25519(a, crypto.x25519_public(b)).hex() == shared
    assert crypto.X25519Key(b).exchange(crypto.x25519_public(a)).hex() == shared


def test_x25519_small_order_rejected() -> None:
    with pytest.raises(CryptoError):
        crypto.X25519Key(bytes(range(32))).exchange(bytes(32))


def test_chacha20_rfc8439() -> None:
    # RFC 8439 §2.4.2: key 00..1f, nonce 000000000000004a00000000, counter 1.
    key = bytes(range(32))
    nonce = X("000000000000004a00000000")
    text = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    out = crypto.chacha20_xor(key, nonce, text, counter=1)
    assert out[:16].hex() == "6e2e359a2568f98041ba0728dd0d6981"
    assert crypto.chacha20_xor(key, nonce, out, counter=1) == text


def test_aead_rfc8439() -> None:
    # RFC 8439 §2.8.2.
    key = X("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce = X("070000004041424344454647")
    ad = X("50515253c0c1c2c3c4c5c6c7")
    text = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    sealed = crypto.aead_seal(key, nonce, text, ad)
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert crypto.aead_open(key, nonce, sealed, ad) == text
    with pytest.raises(AuthenticationError):
        crypto.aead_open(key, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), ad)


def test_hkdf_rfc5869_case1() -> None:
    okm = crypto.hkdf_sha256(
        b"\x0b" * 22, X("000102030405060708090a0b0c"), X("f0f1f2f3f4f5f6f7f8f9"), 42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_keyed_blake2b_matches_hashlib() -> None:
    key = bytes(range(32))
    assert (
        crypto.keyed_hash(key, b"abc", 16)
        == hashlib.blake2b(b"abc", key=key, digest_size=16).digest()
    )
    with pytest.raises(CryptoError):
        crypto.keyed_hash(key[:31], b"abc")


def test_signatures_and_kem() -> None:
    seed = bytes(range(32))
    msg = b"consensus"
    crypto.ed25519_verify(crypto.ed25519_public(seed), msg, crypto.ed25519_sign(seed, msg))
    with pytest.raises(AuthenticationError):
        crypto.ed25519_verify(
            crypto.ed25519_public(seed), msg + b"!", crypto.ed25519_sign(seed, msg)
        )
    pub = crypto.mldsa65_public(seed)
    sig = crypto.mldsa65_sign(seed, msg)
    crypto.mldsa65_verify(pub, msg, sig)
    with pytest.raises(AuthenticationError):
        crypto.mldsa65_verify(pub, msg, sig[:-1] + bytes([sig[-1] ^ 1]))
    kem = crypto.MLKEM768Key(bytes(64))
    ct, ss = crypto.mlkem768_encapsulate(kem.public_bytes)
    assert kem.decapsulate(ct) == ss and len(ct) == P.MLKEM768_CIPHERTEXT_LEN
    with pytest.raises(CryptoError):
        crypto.mlkem768_encapsulate(b"short")


def test_door_checks_types_and_lengths() -> None:
    with pytest.raises(CryptoError, match="key must be 32 bytes"):
        crypto.chacha20_xor(bytes(31), bytes(12), b"x")
    with pytest.raises(CryptoError, match="must be bytes"):
        crypto.aead_seal("k" * 32, bytes(12), b"x")  # type: ignore[arg-type]
    assert crypto.ct_equal(b"abc", b"abc") and not crypto.ct_equal(b"abc", b"abd")


@given(keys=st.binary(min_size=128, max_size=128), block=st.binary(min_size=33, max_size=300))
def test_lioness_is_a_permutation(keys: bytes, block: bytes) -> None:
    enc = crypto.lioness_encrypt(keys, block)
    assert len(enc) == len(block)
    assert crypto.lioness_decrypt(keys, enc) == block


@given(
    keys=st.binary(min_size=128, max_size=128),
    block=st.binary(min_size=64, max_size=200),
    where=st.integers(min_value=0),
)
def test_lioness_bit_flip_scrambles_everything(keys: bytes, block: bytes, where: int) -> None:
    enc = bytearray(crypto.lioness_encrypt(keys, block))
    enc[where % len(enc)] ^= 1
    dec = crypto.lioness_decrypt(keys, bytes(enc))
    # Both halves change (a stream cipher alone would change one byte).
    assert dec[:32] != block[:32] and dec[32:] != block[32:]


def test_aead_key_matches_the_one_shot_functions() -> None:
    key, nonce, text, ad = bytes(range(32)), bytes(range(12)), b"frame" * 1000, b"header"
    aead = P.AeadKey(key)
    sealed = aead.seal(nonce, memoryview(text), ad)
    assert sealed == P.aead_seal(key, nonce, text, ad)
    assert aead.open(nonce, memoryview(sealed), ad) == text
    with pytest.raises(AuthenticationError):
        aead.open(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), ad)
    with pytest.raises(CryptoError):
        aead.seal(bytes(11), text)
    with pytest.raises(CryptoError):
        P.AeadKey(bytes(31))
