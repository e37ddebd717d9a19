"""``qnet._fast`` (Cython + libsodium) must give the same bytes as ``qnet.crypto.hopcrypto``.

Valid Sphinx packets come from ``qnet.mix.sphinx.build_packet`` on the pure-Python
path; every hot-path call is then made on both backends and compared.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.constants import (
    BODY_LEN,
    CELL_PLAINTEXT_LEN,
    PACKET_LEN,
    PAYLOAD_LEN,
    UNWRAP_OUT_LEN,
)
from qnet.crypto import accel
from qnet.crypto import hopcrypto as ref
from qnet.crypto.primitives import chacha20_xor, x25519_public
from qnet.errors import CryptoError
from qnet.mix import sphinx as S

try:
    from qnet import _fast as fast
except ImportError as exc:  # pragma: no cover - depends on the build
    if os.environ.get("QNET_REQUIRE_EXT"):  # CI: a missing accelerator is a failure
        raise
    pytest.skip(
        f"qnet._fast cannot be imported ({exc}); build it with "
        "`python setup.py build_ext --inplace`",
        allow_module_level=True,
    )

U64_MAX = 2**64 - 1
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small-order / non-canonical X25519 u-coordinates: all give an all-zero shared secret.
_P = 2**255 - 19
SMALL_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
    _P,
    _P + 1,
]
SMALL_ORDER_ALPHAS = [u.to_bytes(32, "little") for u in SMALL_ORDER_U] + [
    bytes(31) + b"\x80",  # 0 with the (ignored) top bit set
]


# --- helpers ------------------------------------------------------------------------


def both(name: str, *args: Any) -> Any:
    """Call ``name`` on both backends; results (or exception classes) must be identical."""
    outcomes = []
    for mod in (ref, fast):
        try:
            outcomes.append(("ok", getattr(mod, name)(*args)))
        except Exception as exc:  # noqa: BLE001 - we compare the class
            outcomes.append(("raise", type(exc)))
    assert outcomes[0] == outcomes[1], (
        f"{name}: reference {outcomes[0]!r:.200} != cython {outcomes[1]!r:.200}"
    )
    return outcomes[0][1]


def node_key(rng: random.Random) -> tuple[bytes, bytes]:
    private = rng.randbytes(32)
    return private, x25519_public(private)


def random_path(
    n: int, seed: int
) -> tuple[list[tuple[bytes, bytes]], bytes, list[S.Slot], S.BuiltPacket, bytes]:
    """A valid ``n``-hop packet from ``qnet.mix.sphinx`` (pure-Python builder)."""
    rng = random.Random(seed)
    hops = [node_key(rng) for _ in range(n)]
    ids = [rng.randbytes(32) for _ in range(n)]
    final = S.Slot(
        command=S.Command.DELIVER,
        delay_us=rng.randrange(10**6),
        address=rng.randbytes(32),
        tag=rng.randbytes(16),
    )
    delays = [rng.randrange(10**6) for _ in range(n)]
    route = S.mix_route([(i, pub) for i, (_, pub) in zip(ids, hops, strict=True)], final, delays)
    message = rng.randbytes(rng.randrange(0, 1497))
    with _pure():
        built = S.build_packet(route, message, rng.randbytes)
    slots = [
        S.Slot(
            command=h.slot.command,
            delay_us=h.slot.delay_us,
            tag=h.slot.tag,
            address=ids[i + 1] if i + 1 < n else h.slot.address,
        )
        for i, h in enumerate(route)
    ]
    return hops, built.packet, slots, built, message


@contextlib.contextmanager
def _pure() -> Iterator[None]:
    previous = accel.BACKEND_NAME
    accel.select("python")
    try:
        yield
    finally:
        accel.select(previous)


# --- module surface -------------------------------------------------------------------


def test_constants_and_api() -> None:
    assert fast.BACKEND == "cython"
    assert (fast.OK, fast.ERR_LENGTH, fast.ERR_POINT, fast.ERR_MAC) == (0, 1, 2, 3)
    assert (ref.OK, ref.ERR_LENGTH, ref.ERR_POINT, ref.ERR_MAC) == (0, 1, 2, 3)
    for name in (
        "sphinx_unwrap",
        "sphinx_unwrap_batch",
        "lioness_encrypt_block",
        "lioness_decrypt_block",
        "cell_xor",
        "cell_xor_batch",
        "cell_seal",
        "cell_seal_batch",
        "cell_open",
        "cell_open_batch",
    ):
        assert callable(getattr(fast, name)), name


def test_accel_picks_cython(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QNET_PURE", raising=False)
    from qnet.crypto import accel

    backend, reason = accel._load()
    assert backend is fast and reason == ""


# --- Sphinx ---------------------------------------------------------------------------


def test_random_packets_mostly_bad_mac() -> None:
    rng = random.Random(1)
    private, public = node_key(rng)
    packets = [rng.randbytes(PACKET_LEN) for _ in range(16)]
    singles = [both("sphinx_unwrap", private, public, p) for p in packets]
    assert all(s == (fast.ERR_MAC, b"") for s in singles)
    assert both("sphinx_unwrap_batch", private, public, packets) == singles


@pytest.mark.parametrize("n_hops", [1, 2, 3, 5])
def test_valid_packet_walks_the_path(n_hops: int) -> None:
    hops, packet, slots, built, message = random_path(n_hops, seed=100 + n_hops)
    for i, (private, public) in enumerate(hops):
        status, out = both("sphinx_unwrap", private, public, packet)
        assert status == fast.OK and len(out) == UNWRAP_OUT_LEN
        assert both("sphinx_unwrap_batch", private, public, [packet]) == [(status, out)]
        assert out[:16] == built.hops[i].replay_tag and out[16:48] == built.hops[i].hop_secret
        slot, next_beta, payload = out[48:144], out[144:624], out[624:]
        parsed, next_alpha, next_gamma = S.parse_slot(slot)
        assert parsed == slots[i]
        if i < n_hops - 1:
            assert next_alpha == built.hops[i + 1].alpha
            packet = next_alpha + next_gamma + next_beta + payload
        else:
            assert payload[:16] == bytes(16)
            assert payload[16 : 16 + len(message)] == message
            assert payload[16 + len(message) :] == bytes(PAYLOAD_LEN - 16 - len(message))


def test_wrong_node_key_is_bad_mac() -> None:
    hops, packet, *_ = random_path(3, seed=7)
    other_private, other_public = node_key(random.Random(8))
    assert both("sphinx_unwrap", other_private, other_public, packet) == (fast.ERR_MAC, b"")
    # Right private key, wrong public key in the HKDF info: also bad_mac.
    assert both("sphinx_unwrap", hops[0][0], other_public, packet) == (fast.ERR_MAC, b"")


def test_flipped_bits() -> None:
    hops, packet, *_ = random_path(2, seed=9)
    private, public = hops[0]
    for pos in (0, 35, 48, 300, 527, 528, 2039):
        bad = bytearray(packet)
        bad[pos] ^= 0x01
        result = both("sphinx_unwrap", private, public, bytes(bad))
        if pos < 528:
            assert result[0] in (fast.ERR_MAC, fast.ERR_POINT)
        else:  # payload bits are not covered by the header MAC
            assert result[0] == fast.OK


@pytest.mark.parametrize("length", [0, 1, 2039, 2041, 4080])
def test_wrong_packet_length(length: int) -> None:
    private, public = node_key(random.Random(2))
    packet = random.Random(length).randbytes(length)
    assert both("sphinx_unwrap", private, public, packet) == (fast.ERR_LENGTH, b"")
    assert both("sphinx_unwrap_batch", private, public, [packet]) == [(fast.ERR_LENGTH, b"")]


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "x" * 32, 32, None], ids=repr)
def test_wrong_node_private(bad: Any) -> None:
    _, public = node_key(random.Random(3))
    packet = bytes(PACKET_LEN)
    assert both("sphinx_unwrap", bad, public, packet) is CryptoError
    assert both("sphinx_unwrap_batch", bad, public, [packet]) is CryptoError
    assert both("sphinx_unwrap_batch", bad, public, []) is CryptoError


def test_node_public_not_a_buffer() -> None:
    private, _ = node_key(random.Random(4))
    packet = random.Random(5).randbytes(PACKET_LEN)
    # The reference only touches node_public when it builds alpha ‖ node_public.
    assert both("sphinx_unwrap", private, "not bytes", packet) is TypeError
    assert both("sphinx_unwrap_batch", private, "not bytes", [packet]) is TypeError
    assert both("sphinx_unwrap", private, "not bytes", b"short") == (fast.ERR_LENGTH, b"")
    assert both("sphinx_unwrap_batch", private, "not bytes", [b"short"]) == [(fast.ERR_LENGTH, b"")]
    zero_alpha = bytes(32) + packet[32:]
    assert both("sphinx_unwrap", private, "not bytes", zero_alpha) == (fast.ERR_POINT, b"")


def test_node_public_of_other_length_goes_into_info() -> None:
    hops, packet, *_ = random_path(1, seed=6)
    private, public = hops[0]
    for pub in (b"", public[:16], public + b"\x00", public * 3):
        both("sphinx_unwrap", private, pub, packet)
        both("sphinx_unwrap_batch", private, pub, [packet, packet])


@pytest.mark.parametrize("alpha", SMALL_ORDER_ALPHAS, ids=range(len(SMALL_ORDER_ALPHAS)))
def test_small_order_alpha(alpha: bytes) -> None:
    private, public = node_key(random.Random(10))
    packet = alpha + random.Random(11).randbytes(PACKET_LEN - 32)
    assert both("sphinx_unwrap", private, public, packet) == (fast.ERR_POINT, b"")
    assert both("sphinx_unwrap_batch", private, public, [packet]) == [(fast.ERR_POINT, b"")]


def _mixed_batch(size: int, seed: int) -> tuple[bytes, bytes, list[Any]]:
    rng = random.Random(seed)
    hops, valid, *_ = random_path(2, seed=seed)
    private, public = hops[0]
    kinds: list[Callable[[], Any]] = [
        lambda: valid,
        lambda: rng.randbytes(PACKET_LEN),
        lambda: rng.randbytes(rng.choice([0, 100, 2039, 2041])),
        lambda: bytes(32) + valid[32:],
        lambda: bytearray(valid),
        lambda: memoryview(valid),
        lambda: memoryview(bytearray(b"\xff" + valid))[1:],
    ]
    return private, public, [kinds[i % len(kinds)]() for i in range(size)]


@pytest.mark.parametrize("size", [0, 1, 7, 40])
def test_sphinx_batch_matches_singles(size: int) -> None:
    private, public, packets = _mixed_batch(size, seed=20 + size)
    batch = both("sphinx_unwrap_batch", private, public, packets)
    assert isinstance(batch, list) and len(batch) == size
    assert batch == [both("sphinx_unwrap", private, public, p) for p in packets]
    for status, out in batch:
        assert type(status) is int and type(out) is bytes
    if size >= 7:
        assert {s for s, _ in batch} == {fast.OK, fast.ERR_MAC, fast.ERR_LENGTH, fast.ERR_POINT}
    # Any iterable, like the reference.
    assert both("sphinx_unwrap_batch", private, public, tuple(packets)) == batch
    assert fast.sphinx_unwrap_batch(private, public, iter(packets)) == batch


def test_sphinx_buffer_arguments() -> None:
    hops, packet, *_ = random_path(1, seed=30)
    private, public = hops[0]
    expected = both("sphinx_unwrap", private, public, packet)
    assert expected[0] == fast.OK
    for wrap in (bytes, bytearray, memoryview):
        got = both("sphinx_unwrap", wrap(private), wrap(public), wrap(packet))
        assert got == expected
        assert both("sphinx_unwrap_batch", wrap(private), wrap(public), [wrap(packet)]) == [
            expected
        ]


def test_sphinx_batch_threads() -> None:
    private, public, packets = _mixed_batch(64, seed=40)
    expected = fast.sphinx_unwrap_batch(private, public, packets)
    assert expected == ref.sphinx_unwrap_batch(private, public, packets)
    barrier = threading.Barrier(2)
    results: list[list[Any]] = [[], []]

    def worker(slot: int) -> None:
        barrier.wait()
        for _ in range(5):
            results[slot].append(fast.sphinx_unwrap_batch(private, public, packets))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == [expected] * 5
    assert results[1] == [expected] * 5


# --- Lioness --------------------------------------------------------------------------


@SETTINGS
@given(keys=st.binary(min_size=128, max_size=128), block=st.binary(min_size=33, max_size=3000))
def test_lioness_equivalence(keys: bytes, block: bytes) -> None:
    enc = both("lioness_encrypt_block", keys, block)
    dec = both("lioness_decrypt_block", keys, block)
    assert len(enc) == len(dec) == len(block)
    assert fast.lioness_decrypt_block(keys, enc) == block
    assert fast.lioness_encrypt_block(keys, dec) == block


def test_lioness_payload_size_and_buffers() -> None:
    rng = random.Random(50)
    keys, block = rng.randbytes(128), rng.randbytes(PAYLOAD_LEN)
    enc = both("lioness_encrypt_block", keys, block)
    for wrap in (bytearray, memoryview):
        assert both("lioness_encrypt_block", wrap(keys), wrap(block)) == enc
        assert both("lioness_decrypt_block", wrap(keys), wrap(enc)) == block
    big = rng.randbytes(20000)  # large enough to take the GIL-free path
    assert fast.lioness_decrypt_block(keys, both("lioness_encrypt_block", keys, big)) == big


@pytest.mark.parametrize(
    ("keys", "block"),
    [
        (bytes(127), bytes(100)),
        (bytes(129), bytes(100)),
        (bytes(128), bytes(32)),
        (bytes(128), b""),
    ],
    ids=["keys127", "keys129", "block32", "block0"],
)
def test_lioness_errors(keys: bytes, block: bytes) -> None:
    assert both("lioness_encrypt_block", keys, block) is CryptoError
    assert both("lioness_decrypt_block", keys, block) is CryptoError


# --- cells ----------------------------------------------------------------------------

COUNTERS = st.one_of(
    st.integers(0, U64_MAX),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**32 + 1, U64_MAX - 1, U64_MAX]),
)


@SETTINGS
@given(key=st.binary(min_size=32, max_size=32), counter=COUNTERS, body=st.binary(max_size=5000))
def test_cell_xor_equivalence(key: bytes, counter: int, body: bytes) -> None:
    out = both("cell_xor", key, counter, body)
    assert fast.cell_xor(key, counter, out) == body


@SETTINGS
@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(0, U64_MAX - 8),
    cells=st.integers(0, 8),
    seed=st.integers(0, 2**32),
)
def test_cell_batches_equivalence(key: bytes, counter: int, cells: int, seed: int) -> None:
    rng = random.Random(seed)
    bodies = rng.randbytes(cells * BODY_LEN)
    plain = rng.randbytes(cells * CELL_PLAINTEXT_LEN)
    assert len(both("cell_xor_batch", key, counter, bodies)) == len(bodies)
    sealed = both("cell_seal_batch", key, counter, plain)
    assert both("cell_open_batch", key, counter, sealed) == (plain, -1)


def test_cell_counter_is_64_bit_nonce_not_block_counter() -> None:
    rng = random.Random(60)
    key, body = rng.randbytes(32), rng.randbytes(BODY_LEN)
    for counter in (2**32 - 1, 2**32, 2**32 + 1, U64_MAX - 1, U64_MAX):
        nonce = counter.to_bytes(8, "little") + bytes(4)
        out = both("cell_xor", key, counter, body)
        assert out == chacha20_xor(key, nonce, body)
    assert fast.cell_xor(key, 2**32, body) != fast.cell_xor(key, 0, body)
    assert fast.cell_xor(key, 2**32, body) != fast.cell_xor(key, 1, body)


@pytest.mark.parametrize("counter", [0, 2**32 - 1, 2**32, U64_MAX])
def test_cell_seal_open(counter: int) -> None:
    rng = random.Random(counter % 1000)
    key, plain = rng.randbytes(32), rng.randbytes(CELL_PLAINTEXT_LEN)
    body = both("cell_seal", key, counter, plain)
    assert len(body) == BODY_LEN
    assert both("cell_open", key, counter, body) == plain
    tampered = bytearray(body)
    tampered[rng.randrange(BODY_LEN)] ^= 0x20
    assert both("cell_open", key, counter, bytes(tampered)) is None
    if counter:
        assert both("cell_open", key, counter - 1, body) is None
    assert both("cell_open", rng.randbytes(32), counter, body) is None


@pytest.mark.parametrize("size", [0, 1, 7])
def test_cell_batches_sizes(size: int) -> None:
    rng = random.Random(70 + size)
    key = rng.randbytes(32)
    counter = 2**32 - 3
    plain = rng.randbytes(size * CELL_PLAINTEXT_LEN)
    bodies = both("cell_seal_batch", key, counter, plain)
    assert len(bodies) == size * BODY_LEN
    for k in range(size):  # batch == singles with counter + k
        chunk = plain[k * CELL_PLAINTEXT_LEN : (k + 1) * CELL_PLAINTEXT_LEN]
        assert bodies[k * BODY_LEN : (k + 1) * BODY_LEN] == both(
            "cell_seal", key, counter + k, chunk
        )
    xored = both("cell_xor_batch", key, counter, bodies)
    assert xored == b"".join(
        both("cell_xor", key, counter + k, bodies[k * BODY_LEN : (k + 1) * BODY_LEN])
        for k in range(size)
    )
    assert both("cell_xor_batch", key, counter, xored) == bodies
    assert both("cell_open_batch", key, counter, bodies) == (plain, -1)
    if size:
        bad_index = size // 2
        tampered = bytearray(bodies)
        tampered[bad_index * BODY_LEN + 5] ^= 1
        opened = both("cell_open_batch", key, counter, bytes(tampered))
        assert opened == (plain[: bad_index * CELL_PLAINTEXT_LEN], bad_index)
        # A wrong counter fails the first cell.
        assert both("cell_open_batch", key, counter + 1, bodies) == (b"", 0)


def test_cell_buffer_arguments() -> None:
    rng = random.Random(80)
    key, counter = rng.randbytes(32), 2**32
    plain = rng.randbytes(3 * CELL_PLAINTEXT_LEN)
    bodies = fast.cell_seal_batch(key, counter, plain)
    for wrap in (bytearray, memoryview):
        assert both("cell_xor", wrap(key), counter, wrap(bodies[:BODY_LEN])) == ref.cell_xor(
            key, counter, bodies[:BODY_LEN]
        )
        assert both("cell_xor_batch", wrap(key), counter, wrap(bodies)) == ref.cell_xor_batch(
            key, counter, bodies
        )
        assert (
            both("cell_seal", wrap(key), counter, wrap(plain[:CELL_PLAINTEXT_LEN]))
            == bodies[:BODY_LEN]
        )
        assert both("cell_seal_batch", wrap(key), counter, wrap(plain)) == bodies
        assert (
            both("cell_open", wrap(key), counter, wrap(bodies[:BODY_LEN]))
            == plain[:CELL_PLAINTEXT_LEN]
        )
        assert both("cell_open_batch", wrap(key), counter, wrap(bodies)) == (plain, -1)
    # A non-contiguous memoryview is taken as bytes(view), as in the reference.
    strided = memoryview(bytes(x for b in bodies for x in (b, 0)))[::2]
    assert both("cell_open_batch", key, counter, strided) == (plain, -1)
    assert both("cell_xor_batch", key, counter, strided) == ref.cell_xor_batch(key, counter, bodies)
    strided_plain = memoryview(bytes(x for b in plain for x in (b, 0)))[::2]
    assert both("cell_seal_batch", key, counter, strided_plain) == bodies


def test_cell_xor_large_body() -> None:
    rng = random.Random(90)
    key, body = rng.randbytes(32), rng.randbytes(100_000)  # GIL-free path of the single call
    assert both("cell_xor", key, 5, body) == chacha20_xor(
        key, (5).to_bytes(8, "little") + bytes(4), body
    )


BAD_COUNTERS = [-1, 2**64, 2**70, -(2**64), 1.0, "0", None]


@pytest.mark.parametrize("counter", BAD_COUNTERS, ids=repr)
def test_cell_bad_counter(counter: Any) -> None:
    key = bytes(32)
    assert both("cell_xor", key, counter, bytes(10)) is CryptoError
    assert both("cell_seal", key, counter, bytes(CELL_PLAINTEXT_LEN)) is CryptoError
    assert both("cell_open", key, counter, bytes(BODY_LEN)) is CryptoError
    # The batches compute ``counter + k`` first: a str or None counter is a TypeError there.
    batch_error = TypeError if isinstance(counter, str | None) else CryptoError
    assert both("cell_xor_batch", key, counter, bytes(BODY_LEN)) is batch_error
    assert both("cell_seal_batch", key, counter, bytes(CELL_PLAINTEXT_LEN)) is batch_error
    assert both("cell_open_batch", key, counter, bytes(BODY_LEN)) is batch_error
    # Empty batches and wrong-length bodies never look at the counter.
    assert both("cell_xor_batch", key, counter, b"") == b""
    assert both("cell_seal_batch", key, counter, b"") == b""
    assert both("cell_open_batch", key, counter, b"") == (b"", -1)
    assert both("cell_open", key, counter, bytes(BODY_LEN - 1)) is None


def test_cell_batch_counter_overflow() -> None:
    key = bytes(32)
    # The last cell may use 2**64-1 ...
    both("cell_xor_batch", key, U64_MAX - 1, bytes(2 * BODY_LEN))
    sealed = both("cell_seal_batch", key, U64_MAX - 1, bytes(2 * CELL_PLAINTEXT_LEN))
    assert both("cell_open_batch", key, U64_MAX - 1, sealed) == (bytes(2 * CELL_PLAINTEXT_LEN), -1)
    # ... but never wrap around to 0.
    assert both("cell_xor_batch", key, U64_MAX, bytes(2 * BODY_LEN)) is CryptoError
    assert both("cell_seal_batch", key, U64_MAX - 1, bytes(3 * CELL_PLAINTEXT_LEN)) is CryptoError
    last = both("cell_seal", key, U64_MAX, bytes(CELL_PLAINTEXT_LEN))
    assert both("cell_open_batch", key, U64_MAX, last + sealed[:BODY_LEN]) is CryptoError
    # As in the reference, the first failing cell ends the batch before the overflow.
    assert both("cell_open_batch", key, U64_MAX, sealed) == (b"", 0)


@pytest.mark.parametrize(
    "key", [b"", bytes(31), bytes(33), "k" * 32, 7], ids=["0", "31", "33", "str", "int"]
)
def test_cell_bad_key(key: Any) -> None:
    assert both("cell_xor", key, 0, bytes(10)) is CryptoError
    assert both("cell_xor_batch", key, 0, bytes(BODY_LEN)) is CryptoError
    assert both("cell_seal", key, 0, bytes(CELL_PLAINTEXT_LEN)) is CryptoError
    assert both("cell_seal_batch", key, 0, bytes(CELL_PLAINTEXT_LEN)) is CryptoError
    assert both("cell_open", key, 0, bytes(BODY_LEN)) is CryptoError
    assert both("cell_open_batch", key, 0, bytes(BODY_LEN)) is CryptoError


def test_cell_wrong_lengths() -> None:
    key = bytes(32)
    for n in (0, 2023, 2025, 2040):
        assert both("cell_seal", key, 0, bytes(n)) is CryptoError
    for n in (0, 2039, 2041, 2024):
        assert both("cell_open", key, 0, bytes(n)) is None
    for n in (1, BODY_LEN - 1, BODY_LEN + 1, 2 * BODY_LEN + 7):
        assert both("cell_xor_batch", key, 0, bytes(n)) is CryptoError
        assert both("cell_open_batch", key, 0, bytes(n)) is CryptoError
    for n in (1, CELL_PLAINTEXT_LEN - 1, CELL_PLAINTEXT_LEN + 1, BODY_LEN):
        assert both("cell_seal_batch", key, 0, bytes(n)) is CryptoError
    assert both("cell_xor", key, 0, b"") == b""


def test_non_bytes_data_like_reference() -> None:
    """Data arguments are taken as ``bytes(x)`` in both backends."""
    key = bytes(32)
    call: Callable[..., Any]
    for call in (
        lambda m: m.cell_xor(key, 0, "text"),
        lambda m: m.cell_xor(key, 0, [1, 2, 3]),
        lambda m: m.cell_open(key, 0, 5),
        lambda m: m.cell_xor_batch(key, 0, None),
        lambda m: m.lioness_encrypt_block("k" * 128, bytes(40)),
    ):
        outcomes = []
        for mod in (ref, fast):
            try:
                outcomes.append(call(mod))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]
