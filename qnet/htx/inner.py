"""The HTX inner handshake: Noise XK (X25519, ChaCha20-Poly1305, SHA-256) plus ML-KEM-768.

Sans-I/O. Both sides are one-shot objects fed with the bytes the tunnel
delivers; each call says what to send next, and the last one hands back the
``session_secret`` and whatever input followed the handshake (spec/htx-inner.md).

    hs = InnerInitiator(node_link_public, node_mlkem_public, exporter)
    send(hs.start())
    while True:
        step = hs.receive(read())        # raises only HandshakeError
        send(step.send)
        if isinstance(step, Finished):
            break                        # step.read_ahead belongs to the frame layer

The Noise work is done by ``noiseprotocol`` 0.3.1 (import name ``noise``). It
has no type hints and a few facts we need are not in its public API; every
reach into its internals is in this module, in ``_Noise``, and names the
version it was read from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection  # type: ignore[import-untyped]

from qnet.crypto.primitives import (
    MLKEM768_CIPHERTEXT_LEN,
    MLKEM768_PUBLIC_LEN,
    X25519_LEN,
    MLKEM768Key,
    X25519Key,
    ct_equal,
    hkdf_sha256,
    mlkem768_encapsulate,
    random_bytes,
)
from qnet.errors import CryptoError
from qnet.htx.errors import HandshakeError

__all__ = [
    "EXPORTER_CONTEXT",
    "EXPORTER_LABEL",
    "EXPORTER_LEN",
    "Continue",
    "Finished",
    "FixedInputs",
    "InnerInitiator",
    "InnerResponder",
    "Step",
    "derive_session_secret",
    "kem_confirm",
]

#: The noiseprotocol release whose internals ``_Noise`` reads (pinned in pyproject.toml).
NOISE_VERSION: Final = "0.3.1"
PROTOCOL_NAME: Final = b"Noise_XK_25519_ChaChaPoly_SHA256"
#: What the outer layer must export from TLS 1.3 (RFC 8446 §7.5) and pass as ``prologue``.
EXPORTER_LABEL: Final = b"EXPORTER-qnet-htx-inner-v1"
EXPORTER_CONTEXT: Final = b""
EXPORTER_LEN: Final = 32

SESSION_SECRET_LEN: Final = 32
KEM_CONFIRM_LEN: Final = 32
SESSION_INFO: Final = b"qnet-htx-inner-v1 session secret"
KEM_CONFIRM_INFO: Final = b"qnet-htx-inner-v1 kem confirm"

LENGTH_PREFIX: Final = 2
_TAG: Final = 16
#: Padding a sender adds to each payload: one rng byte, so 0..255 zero bytes.
SEND_PAD_MAX: Final = 255
#: Padding a receiver accepts (room for future senders that pad more).
ACCEPT_PAD_MAX: Final = 1024

#: Noise message sizes without padding: e ‖ AEAD(ciphertext), e ‖ AEAD(confirm), AEAD(s) ‖ AEAD().
MSG1_MIN: Final = X25519_LEN + MLKEM768_CIPHERTEXT_LEN + _TAG  # 1136
MSG2_MIN: Final = X25519_LEN + KEM_CONFIRM_LEN + _TAG  # 80
MSG3_MIN: Final = X25519_LEN + _TAG + _TAG  # 64
MSG1_MAX: Final = MSG1_MIN + ACCEPT_PAD_MAX
MSG2_MAX: Final = MSG2_MIN + ACCEPT_PAD_MAX
MSG3_MAX: Final = MSG3_MIN + ACCEPT_PAD_MAX

#: ``receive`` calls allowed per handshake. Feeding every message one byte at a time
#: needs at most MSG1_MAX + MSG3_MAX + 4 calls on the responder; past this the peer is
#: dribbling and the handshake is abandoned.
MAX_RECEIVE_CALLS: Final = 4096

Rng = Callable[[int], bytes]


# --- what the caller is told ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Continue:
    """Send ``send`` (possibly empty), then call ``receive`` with more input."""

    send: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The handshake is complete.

    ``send`` must still go out (the initiator's message 3; empty for the responder).
    ``read_ahead`` is input that followed the last handshake message: it belongs to
    the frame layer and must be fed to it before anything read later.
    """

    send: bytes
    session_secret: bytes = field(repr=False)
    remote_static_public: bytes
    handshake_hash: bytes
    read_ahead: bytes

    def __post_init__(self) -> None:
        if len(self.session_secret) != SESSION_SECRET_LEN:
            raise ValueError("session_secret must be 32 bytes")
        if len(self.remote_static_public) != X25519_LEN:
            raise ValueError("remote_static_public must be 32 bytes")


Step = Continue | Finished


@dataclass(frozen=True, slots=True, kw_only=True)
class FixedInputs:
    """Values normally drawn at random, fixed for test vectors. Never in production.

    ``ephemeral_private``: this side's Noise ephemeral key. ``kem``: the initiator's
    ML-KEM encapsulation result ``(ciphertext, shared_secret)``, because encapsulation
    in ``cryptography`` cannot be seeded.
    """

    ephemeral_private: bytes | None = None
    kem: tuple[bytes, bytes] | None = None


# --- derivations (spec/htx-inner.md §5) ---------------------------------------------


def kem_confirm(shared_secret: bytes, ciphertext: bytes, exporter: bytes) -> bytes:
    """The responder's proof, in message 2, that it decapsulated the same ML-KEM secret."""
    return hkdf_sha256(shared_secret, exporter, KEM_CONFIRM_INFO + ciphertext, KEM_CONFIRM_LEN)


def derive_session_secret(
    k1: bytes, k2: bytes, kem_secret: bytes, exporter: bytes, handshake_hash: bytes
) -> bytes:
    """session_secret = HKDF-SHA256(ikm = k1 ‖ k2 ‖ kem ‖ exporter, salt = h, info, 32)."""
    return hkdf_sha256(
        k1 + k2 + kem_secret + exporter, handshake_hash, SESSION_INFO, SESSION_SECRET_LEN
    )


def frame(message: bytes) -> bytes:
    """One handshake message on the wire: length u16 big-endian ‖ message."""
    return len(message).to_bytes(LENGTH_PREFIX, "big") + message


# --- the one place that knows noiseprotocol 0.3.1 ----------------------------------------


class _Noise:
    """A typed wrapper over ``noise.connection.NoiseConnection`` (noiseprotocol 0.3.1).

    Internals read here, all checked against 0.3.1's ``noise/state.py`` and
    ``noise/noise_protocol.py``:

    * ``NoiseProtocol.handshake_done`` deletes ``handshake_state`` when the last
      message is processed, so we keep our own reference to it right after
      ``start_handshake`` to read the peer's static key (``.rs.public_bytes``).
    * The two ``Split()`` keys are the ``.k`` of ``cipher_state_encrypt`` and
      ``cipher_state_decrypt``; the initiator encrypts with k1, the responder with k2.
    * A fixed ephemeral key is installed through the public
      ``set_keypair_from_private_bytes(Keypair.EPHEMERAL, ...)``; the library warns
      about it (meant for tests), and we silence that warning only on that path.
    """

    def __init__(
        self,
        initiator: bool,
        prologue: bytes,
        static: bytes,
        remote_static: bytes | None,
        ephemeral: bytes | None,
    ) -> None:
        self.initiator = initiator
        conn: Any = NoiseConnection.from_name(PROTOCOL_NAME)
        if initiator:
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        conn.set_prologue(prologue)
        conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
        if remote_static is not None:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
        if ephemeral is None:
            conn.start_handshake()
        else:
            conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conn.start_handshake()
        self._conn = conn
        self._state: Any = conn.noise_protocol.handshake_state

    def write(self, payload: bytes) -> bytes:
        return bytes(self._conn.write_message(payload))

    def read(self, message: bytes) -> bytes:
        """Decrypt one handshake message; any library failure becomes ``HandshakeError``."""
        try:
            return bytes(self._conn.read_message(message))
        except InvalidTag as exc:
            raise HandshakeError(
                "decrypt_failed", "a handshake message did not authenticate"
            ) from exc
        except Exception as exc:  # it raises ValueError, NoiseValueError and bare Exception
            raise HandshakeError("bad_message", type(exc).__name__) from exc

    @property
    def finished(self) -> bool:
        return bool(self._conn.handshake_finished)

    def handshake_hash(self) -> bytes:
        return bytes(self._conn.get_handshake_hash())

    def remote_static(self) -> bytes:
        return bytes(self._state.rs.public_bytes)

    def split_keys(self) -> tuple[bytes, bytes]:
        """(k1, k2) of Noise ``Split()``: k1 protects initiator → responder."""
        proto = self._conn.noise_protocol
        mine, theirs = bytes(proto.cipher_state_encrypt.k), bytes(proto.cipher_state_decrypt.k)
        return (mine, theirs) if self.initiator else (theirs, mine)


# --- the state machine -----------------------------------------------------------------


class _State(Enum):
    NEW = "new"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


def _bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) != length:
        raise CryptoError(f"{name} must be {length} bytes, got {len(data)}")
    return data


class _Handshake:
    """Buffering, framing, limits and failure handling shared by both roles.

    A role lists the messages it expects as ``(min, max)`` sizes and handles each
    decrypted payload in ``_handle``; everything else is here.
    """

    _expect: list[tuple[int, int]]
    _speaks_first: bool

    def __init__(self, prologue: bytes, rng: Rng) -> None:
        self._exporter = _bytes("prologue", prologue, EXPORTER_LEN)
        self._rng = rng
        self._state = _State.NEW
        self._buffer = bytearray()
        self._calls = 0
        self._noise: _Noise

    def start(self) -> bytes:
        """Begin; returns the bytes to send first (empty for the responder)."""
        if self._state is not _State.NEW:
            raise HandshakeError("bad_state", "start() called twice")
        self._state = _State.WAITING
        return self._first()

    def receive(self, data: bytes) -> Step:
        """Feed input from the peer; ``b""`` means the peer closed the tunnel.

        Returns ``Continue`` (send its bytes, then feed more) or ``Finished``.
        Raises ``HandshakeError`` for anything the peer got wrong, for EOF, for a
        call in the wrong state and past ``MAX_RECEIVE_CALLS``; after one the object
        is spent. Any other exception is a bug (``TypeError`` for non-bytes input).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self._state is _State.NEW and not self._speaks_first:
            self._state = _State.WAITING  # a responder need not call start()
        if self._state is not _State.WAITING:
            raise HandshakeError("bad_state", f"receive() in state {self._state.value}")
        try:
            return self._receive(bytes(data))
        except HandshakeError:
            self._fail()
            raise
        except CryptoError as exc:
            self._fail()
            raise HandshakeError("bad_key", str(exc)) from exc

    def _receive(self, data: bytes) -> Step:
        self._calls += 1
        if self._calls > MAX_RECEIVE_CALLS:
            raise HandshakeError("budget", "too many receive calls")
        if not data:
            raise HandshakeError("eof", "peer closed during the handshake")
        self._buffer += data
        out = bytearray()
        while self._expect:
            low, high = self._expect[0]
            if len(self._buffer) < LENGTH_PREFIX:
                break
            size = int.from_bytes(self._buffer[:LENGTH_PREFIX], "big")
            if size > high:
                raise HandshakeError("oversized", f"message of {size} bytes, limit {high}")
            if size < low:
                raise HandshakeError("undersized", f"message of {size} bytes, minimum {low}")
            end = LENGTH_PREFIX + size
            if len(self._buffer) < end:
                break
            message = bytes(self._buffer[LENGTH_PREFIX:end])
            del self._buffer[:end]
            self._expect.pop(0)
            out += self._handle(self._noise.read(message))
        if self._expect:
            return Continue(send=bytes(out))
        return self._finish(bytes(out))

    def _finish(self, send: bytes) -> Finished:
        if not self._noise.finished:  # pragma: no cover - guarded by the message tables
            raise HandshakeError("bad_state", "noise did not finish")
        h = self._noise.handshake_hash()
        k1, k2 = self._noise.split_keys()
        secret = derive_session_secret(k1, k2, self._kem_secret(), self._exporter, h)
        result = Finished(
            send=send,
            session_secret=secret,
            remote_static_public=self._noise.remote_static(),
            handshake_hash=h,
            read_ahead=bytes(self._buffer),
        )
        self._buffer.clear()
        self._state = _State.DONE
        return result

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._buffer.clear()

    def _padding(self) -> bytes:
        return bytes(self._rng(1)[0])

    # role hooks
    def _first(self) -> bytes:
        raise NotImplementedError

    def _handle(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def _kem_secret(self) -> bytes:
        raise NotImplementedError


class InnerInitiator(_Handshake):
    """The dialing side (a client, or a node opening a link).

    ``responder_static_public`` is the node's link key and ``responder_mlkem_public``
    its ML-KEM-768 key, both from the directory. ``prologue`` is the 32-byte TLS
    exporter value (``EXPORTER_LABEL``, empty context). ``static_private=None`` draws
    a fresh static key from ``rng`` (a client must: an entry may not link a client's
    connections); a node passes its own link key. ``rng`` also draws the padding
    lengths. ``fixed`` is for test vectors only.
    """

    def __init__(
        self,
        responder_static_public: bytes,
        responder_mlkem_public: bytes,
        prologue: bytes,
        static_private: bytes | None = None,
        rng: Rng = random_bytes,
        *,
        fixed: FixedInputs | None = None,
    ) -> None:
        super().__init__(prologue, rng)
        remote = _bytes("responder_static_public", responder_static_public, X25519_LEN)
        mlkem_public = _bytes("responder_mlkem_public", responder_mlkem_public, MLKEM768_PUBLIC_LEN)
        if static_private is None:
            static_private = rng(X25519_LEN)
        self.static = X25519Key(_bytes("static_private", static_private, X25519_LEN))
        fixed = fixed or FixedInputs()
        if fixed.kem is not None:
            ciphertext, shared = fixed.kem
            self._ciphertext = _bytes("kem ciphertext", ciphertext, MLKEM768_CIPHERTEXT_LEN)
            self._shared = _bytes("kem shared secret", shared, 32)
        else:
            self._ciphertext, self._shared = mlkem768_encapsulate(mlkem_public)
        self._noise = _Noise(
            True, self._exporter, self.static.private_bytes, remote, fixed.ephemeral_private
        )
        self._expect = [(MSG2_MIN, MSG2_MAX)]
        self._speaks_first = True

    @property
    def static_public(self) -> bytes:
        """The initiator's static public key (what the responder will learn)."""
        return self.static.public_bytes

    def _first(self) -> bytes:
        return frame(self._noise.write(self._ciphertext + self._padding()))

    def _handle(self, payload: bytes) -> bytes:
        want = kem_confirm(self._shared, self._ciphertext, self._exporter)
        if not ct_equal(payload[:KEM_CONFIRM_LEN], want):
            raise HandshakeError("kem_mismatch", "the responder holds a different ML-KEM secret")
        return frame(self._noise.write(self._padding()))

    def _kem_secret(self) -> bytes:
        return self._shared


class InnerResponder(_Handshake):
    """The listening node. ``static_private`` is its link key, ``mlkem_key`` its
    published ML-KEM-768 key; ``Finished.remote_static_public`` is the initiator's
    static key, which the caller checks against the directory for node links.
    """

    def __init__(
        self,
        static_private: bytes,
        mlkem_key: MLKEM768Key,
        prologue: bytes,
        rng: Rng = random_bytes,
        *,
        fixed: FixedInputs | None = None,
    ) -> None:
        super().__init__(prologue, rng)
        if not isinstance(mlkem_key, MLKEM768Key):
            raise TypeError("mlkem_key must be an MLKEM768Key")
        self._mlkem = mlkem_key
        self._shared = b""
        static = _bytes("static_private", static_private, X25519_LEN)
        fixed = fixed or FixedInputs()
        if fixed.kem is not None:
            raise ValueError("only the initiator takes a fixed ML-KEM result")
        self._noise = _Noise(False, self._exporter, static, None, fixed.ephemeral_private)
        self._expect = [(MSG1_MIN, MSG1_MAX), (MSG3_MIN, MSG3_MAX)]
        self._speaks_first = False

    def _first(self) -> bytes:
        return b""

    def _handle(self, payload: bytes) -> bytes:
        if self._shared:  # message 3: padding only
            return b""
        ciphertext = payload[:MLKEM768_CIPHERTEXT_LEN]
        self._shared = self._mlkem.decapsulate(ciphertext)
        confirm = kem_confirm(self._shared, ciphertext, self._exporter)
        return frame(self._noise.write(confirm + self._padding()))

    def _kem_secret(self) -> bytes:
        return self._shared
