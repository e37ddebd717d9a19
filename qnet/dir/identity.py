"""A node's long-term identity: one Ed25519 and one ML-DSA-65 key, both signing everything.

``node_id(ed25519, mldsa65)`` is the keyed BLAKE2b-256 of both public keys
(spec/directory.md §3). ``Identity.sign`` produces both signatures over a
context-labelled message; ``verify`` accepts only when *both* are valid, so a
forger must break both schemes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from qnet.crypto import (
    ct_equal,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    keyed_hash,
    mldsa65_public,
    mldsa65_sign,
    mldsa65_verify,
    random_bytes,
)
from qnet.errors import AuthenticationError, BadSignature, CryptoError, IdentityMismatch

SEED_LEN: Final = 32
NODE_ID_LEN: Final = 32
ED25519_PUBLIC_LEN: Final = 32
ED25519_SIG_LEN: Final = 64
MLDSA65_PUBLIC_LEN: Final = 1952
MLDSA65_SIG_LEN: Final = 3309

# The BLAKE2b key for node ids: an ASCII label, zero-padded to 32 bytes.
NODE_ID_KEY: Final = b"qnet-dir-v1 node-id".ljust(32, b"\x00")


def node_id(ed25519_pub: bytes, mldsa65_pub: bytes) -> bytes:
    """BLAKE2b-256 keyed with ``NODE_ID_KEY`` over ``ed25519_pub ‖ mldsa65_pub``.

    Both keys have fixed lengths, so the concatenation is unambiguous. Raises
    ``ValueError`` if either length is wrong.
    """
    if len(ed25519_pub) != ED25519_PUBLIC_LEN or len(mldsa65_pub) != MLDSA65_PUBLIC_LEN:
        raise ValueError("identity public keys have the wrong length")
    return keyed_hash(NODE_ID_KEY, bytes(ed25519_pub) + bytes(mldsa65_pub), NODE_ID_LEN)


def signed_message(context: bytes, document: bytes) -> bytes:
    """What both keys sign: ``context ‖ document``. ``context`` must end in NUL."""
    if not context.endswith(b"\x00") or b"\x00" in context[:-1]:
        raise ValueError("a signing context is one NUL-terminated label")
    return context + document


@dataclass(frozen=True, slots=True, kw_only=True)
class Signatures:
    """An Ed25519 signature (64 bytes) and an ML-DSA-65 signature (3,309 bytes)."""

    ed25519: bytes
    mldsa65: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicIdentity:
    """The public half of an identity. ``node_id`` is computed, never trusted from input."""

    ed25519: bytes
    mldsa65: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.ed25519, bytes) or len(self.ed25519) != ED25519_PUBLIC_LEN:
            raise ValueError("ed25519 public key must be 32 bytes")
        if not isinstance(self.mldsa65, bytes) or len(self.mldsa65) != MLDSA65_PUBLIC_LEN:
            raise ValueError("mldsa65 public key must be 1952 bytes")

    @property
    def node_id(self) -> bytes:
        return node_id(self.ed25519, self.mldsa65)

    def check_node_id(self, claimed: bytes) -> None:
        """Raise ``IdentityMismatch`` (``node_id_mismatch``) unless ``claimed`` is our id."""
        if not ct_equal(bytes(claimed), self.node_id):
            raise IdentityMismatch("node_id_mismatch", "node id is not the hash of its keys")

    def verify(self, context: bytes, document: bytes, sigs: Signatures) -> None:
        """Return only if both signatures are valid over ``context ‖ document``.

        Raises ``BadSignature`` with reason ``bad_ed25519_signature`` or
        ``bad_mldsa65_signature`` (Ed25519 is checked first; it is cheaper).
        """
        message = signed_message(context, document)
        try:
            ed25519_verify(self.ed25519, message, sigs.ed25519)
        except (AuthenticationError, CryptoError):
            raise BadSignature("bad_ed25519_signature") from None
        if len(sigs.mldsa65) != MLDSA65_SIG_LEN:
            raise BadSignature("bad_mldsa65_signature", "wrong length")
        try:
            mldsa65_verify(self.mldsa65, message, sigs.mldsa65)
        except (AuthenticationError, CryptoError):
            raise BadSignature("bad_mldsa65_signature") from None


class Identity:
    """A node's long-term private identity: two 32-byte seeds.

    The seeds are secrets: they are not in ``repr`` and there is no equality.
    """

    __slots__ = ("_ed25519_seed", "_mldsa65_seed", "public")

    def __init__(self, ed25519_seed: bytes, mldsa65_seed: bytes) -> None:
        """Raises ``ValueError`` unless both seeds are 32 bytes."""
        for name, seed in (("ed25519_seed", ed25519_seed), ("mldsa65_seed", mldsa65_seed)):
            if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
                raise ValueError(f"{name} must be {SEED_LEN} bytes")
        self._ed25519_seed = ed25519_seed
        self._mldsa65_seed = mldsa65_seed
        self.public = PublicIdentity(
            ed25519=ed25519_public(ed25519_seed), mldsa65=mldsa65_public(mldsa65_seed)
        )

    @classmethod
    def generate(cls) -> Identity:
        return cls(random_bytes(SEED_LEN), random_bytes(SEED_LEN))

    def __repr__(self) -> str:
        return f"Identity(node_id={self.public.node_id.hex()})"

    @property
    def node_id(self) -> bytes:
        return self.public.node_id

    def sign(self, context: bytes, document: bytes) -> Signatures:
        """Both signatures over ``context ‖ document``. ML-DSA-65 signing is randomized."""
        message = signed_message(context, document)
        return Signatures(
            ed25519=ed25519_sign(self._ed25519_seed, message),
            mldsa65=mldsa65_sign(self._mldsa65_seed, message),
        )
