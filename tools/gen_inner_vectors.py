"""Regenerate spec/vectors/htx_inner.json (the HTX inner handshake, spec/htx-inner.md).

    python -m tools.gen_inner_vectors            # write the file
    python -m tools.gen_inner_vectors --check    # fail if the file differs from a fresh run

Static keys, ephemeral keys, the ML-KEM seed and the padding draws are fixed. The
ML-KEM ciphertext cannot be: ``cryptography`` encapsulates with its own randomness.
So one encapsulation result is recorded in the file and reused on every later run
(checked by decapsulating it with the fixed key); only when the file is missing, or
was made for another ML-KEM key, is a fresh one drawn, which changes every value
that depends on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import MLKEM768Key, X25519Key, hkdf_sha256, mlkem768_encapsulate
from qnet.errors import CryptoError
from qnet.htx import inner as I
from qnet.htx.errors import HandshakeError
from tools.vectorio import write_or_check

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "htx_inner.json"


def hx(b: bytes) -> str:
    return bytes(b).hex()


def fixed(label: str, n: int = 32) -> bytes:
    return hkdf_sha256(label.encode(), b"qnet-vectors", b"htx inner", n)


RESPONDER_STATIC = fixed("responder static")
RESPONDER_MLKEM_SEED = fixed("responder ml-kem seed", 64)
EXPORTER = fixed("tls exporter")
NODE_INITIATOR_STATIC = fixed("node initiator static")


def recorded_kem(mlkem: MLKEM768Key) -> tuple[bytes, bytes]:
    """The (ciphertext, shared secret) kept in the current file, or a fresh encapsulation."""
    try:
        old = json.loads(OUT.read_text())
        if old["responder"]["mlkem_public"] == hx(mlkem.public_bytes):
            ct, ss = bytes.fromhex(old["kem"]["ciphertext"]), bytes.fromhex(old["kem"]["shared"])
            if mlkem.decapsulate(ct) == ss:
                return ct, ss
    except (OSError, KeyError, TypeError, ValueError, CryptoError):
        pass
    return mlkem768_encapsulate(mlkem.public_bytes)


def run_case(name: str, kem: tuple[bytes, bytes], initiator_static: bytes | None) -> dict[str, Any]:
    responder_mlkem = MLKEM768Key(RESPONDER_MLKEM_SEED)
    responder_public = X25519Key(RESPONDER_STATIC).public_bytes
    i_seed, r_seed = f"{name} initiator".encode(), f"{name} responder".encode()
    i_eph, r_eph = fixed(f"{name} initiator ephemeral"), fixed(f"{name} responder ephemeral")
    i_rng, r_rng = SeededRandom(i_seed), SeededRandom(r_seed)
    ini = I.InnerInitiator(
        responder_public,
        responder_mlkem.public_bytes,
        EXPORTER,
        initiator_static,
        i_rng,
        fixed=I.FixedInputs(ephemeral_private=i_eph, kem=kem),
    )
    res = I.InnerResponder(
        RESPONDER_STATIC,
        responder_mlkem,
        EXPORTER,
        r_rng,
        fixed=I.FixedInputs(ephemeral_private=r_eph),
    )
    m1 = ini.start()
    step = res.receive(m1)
    assert isinstance(step, I.Continue)
    m2 = step.send
    done_i = ini.receive(m2)
    assert isinstance(done_i, I.Finished)
    m3 = done_i.send
    done_r = res.receive(m3)
    assert isinstance(done_r, I.Finished)
    assert done_r.session_secret == done_i.session_secret
    assert done_r.handshake_hash == done_i.handshake_hash
    k1, k2 = ini._noise.split_keys()
    return {
        "name": name,
        "initiator_seed": hx(i_seed),
        "initiator_draws": [hx(d) for d in i_rng.draws],
        "initiator_static_private": hx(ini.static.private_bytes),
        "initiator_static_public": hx(ini.static_public),
        "initiator_ephemeral_private": hx(i_eph),
        "initiator_ephemeral_public": hx(X25519Key(i_eph).public_bytes),
        "responder_seed": hx(r_seed),
        "responder_draws": [hx(d) for d in r_rng.draws],
        "responder_ephemeral_private": hx(r_eph),
        "responder_ephemeral_public": hx(X25519Key(r_eph).public_bytes),
        "msg1": hx(m1),
        "msg2": hx(m2),
        "msg3": hx(m3),
        "kem_confirm": hx(I.kem_confirm(kem[1], kem[0], EXPORTER)),
        "handshake_hash": hx(done_i.handshake_hash),
        "split_k1": hx(k1),
        "split_k2": hx(k2),
        "session_secret": hx(done_i.session_secret),
    }


def refused(make: Any, inputs: list[bytes]) -> str:
    hs = make()
    hs.start()
    try:
        for data in inputs:
            hs.receive(data)
    except HandshakeError as exc:
        return exc.reason
    raise AssertionError("a negative vector was accepted")


def negatives(kem: tuple[bytes, bytes], client: dict[str, Any]) -> list[dict[str, Any]]:
    m1, m2 = bytes.fromhex(client["msg1"]), bytes.fromhex(client["msg2"])
    mlkem = MLKEM768Key(RESPONDER_MLKEM_SEED)
    wrong_exporter = bytes([EXPORTER[0] ^ 1]) + EXPORTER[1:]
    out: list[dict[str, Any]] = []

    def responder(exporter: bytes = EXPORTER) -> I.InnerResponder:
        return I.InnerResponder(RESPONDER_STATIC, mlkem, exporter)

    for name, exporter, data in [
        ("tampered-msg1", EXPORTER, m1[:-1] + bytes([m1[-1] ^ 0x80])),
        ("wrong-prologue", wrong_exporter, m1),
        ("oversized-length", EXPORTER, b"\xff\xff"),
        ("undersized-length", EXPORTER, b"\x00\x20" + bytes(32)),
    ]:
        reason = refused(lambda e=exporter: responder(e), [data])
        out.append(
            {
                "name": name,
                "side": "responder",
                "exporter": hx(exporter),
                "input": [hx(data)],
                "error": reason,
            }
        )
    # The initiator was given a shared secret the responder cannot have: message 2's
    # confirmation does not match.
    wrong_kem = (kem[0], bytes(32))

    def initiator() -> I.InnerInitiator:
        return I.InnerInitiator(
            X25519Key(RESPONDER_STATIC).public_bytes,
            mlkem.public_bytes,
            EXPORTER,
            None,
            SeededRandom(bytes.fromhex(client["initiator_seed"])),
            fixed=I.FixedInputs(
                ephemeral_private=bytes.fromhex(client["initiator_ephemeral_private"]),
                kem=wrong_kem,
            ),
        )

    out.append(
        {
            "name": "kem-mismatch",
            "side": "initiator",
            "case": client["name"],
            "kem_shared": hx(wrong_kem[1]),
            "input": [hx(m2)],
            "error": refused(initiator, [m2]),
        }
    )
    return out


def vectors() -> dict[str, Any]:
    mlkem = MLKEM768Key(RESPONDER_MLKEM_SEED)
    kem = recorded_kem(mlkem)
    client = run_case("client", kem, None)
    node = run_case("node", kem, NODE_INITIATOR_STATIC)
    return {
        "format": "htx-inner-v1",
        "spec": "spec/htx-inner.md",
        "generator": "python -m tools.gen_inner_vectors",
        "protocol": I.PROTOCOL_NAME.decode(),
        "exporter_label": I.EXPORTER_LABEL.decode(),
        "exporter": hx(EXPORTER),
        "responder": {
            "static_private": hx(RESPONDER_STATIC),
            "static_public": hx(X25519Key(RESPONDER_STATIC).public_bytes),
            "mlkem_seed": hx(RESPONDER_MLKEM_SEED),
            "mlkem_public": hx(mlkem.public_bytes),
        },
        "kem": {"ciphertext": hx(kem[0]), "shared": hx(kem[1])},
        "cases": [client, node],
        "negative": negatives(kem, client),
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check({OUT: vectors}, argv, (__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
