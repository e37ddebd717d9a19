"""Run a ``directory-v1`` vector document (spec/vectors/directory.json) through ``qnet.dir``.

``check_directory(doc)`` returns ``(vector name, what went wrong)`` pairs, empty
when this implementation agrees. It is meant to be registered in
``qnet.lint.vectors.CHECKERS`` (which wraps the pairs as findings); it lives here
so that ``qnet.dir`` does not import the linter.
"""

from __future__ import annotations

from typing import Any

from qnet.crypto import MLKEM768Key, x25519_public
from qnet.dir import encoding
from qnet.dir.descriptor import DESCRIPTOR_CONTEXT, decode_body, envelope, parse_and_verify
from qnet.dir.identity import Identity, Signatures
from qnet.errors import DirectoryError, QNetError

X = bytes.fromhex
Problem = tuple[str, str]


def _same(out: list[Problem], name: str, what: str, got: object, want: object) -> None:
    if got != want:
        g = got.hex() if isinstance(got, bytes) else str(got)
        w = want.hex() if isinstance(want, bytes) else str(want)
        out.append((name, f"{what}: got {g[:40]}, want {w[:40]}"))


def _check_encoding(doc: dict[str, Any], out: list[Problem]) -> None:
    for vec in doc["encoding"]["positive"]:
        raw = X(vec["cbor"])
        try:
            _same(out, vec["name"], "re-encoding", encoding.encode(encoding.decode(raw)), raw)
        except DirectoryError as exc:
            out.append((vec["name"], f"refused canonical input ({exc.reason})"))
    for vec in doc["encoding"]["negative"]:
        try:
            encoding.decode(X(vec["cbor"]))
        except DirectoryError as exc:
            _same(out, vec["name"], "reason", exc.reason, vec["error"])
        else:
            out.append((vec["name"], f"accepted non-canonical input ({vec['error']})"))


def _check_descriptor(doc: dict[str, Any], out: list[Problem]) -> None:
    ids, d = doc["identity"], doc["descriptor"]
    ident = Identity(X(ids["ed25519_seed"]), X(ids["mldsa65_seed"]))
    _same(out, "identity", "ed25519 public", ident.public.ed25519, X(ids["ed25519_public"]))
    _same(out, "identity", "mldsa65 public", ident.public.mldsa65, X(ids["mldsa65_public"]))
    _same(out, "identity", "node id", ident.node_id, X(ids["node_id"]))
    seeds, fields = doc["medium_term_seeds"], d["fields"]
    _same(
        out,
        "keys",
        "link x25519",
        x25519_public(X(seeds["link_x25519_private"])).hex(),
        fields["link_x25519"],
    )
    _same(
        out,
        "keys",
        "ml-kem-768",
        MLKEM768Key(X(seeds["mlkem768_seed"])).public_bytes.hex(),
        fields["kem_mlkem768"],
    )
    _same(out, "context", "context", DESCRIPTOR_CONTEXT, X(d["context"]))
    body = X(d["body"])
    try:
        desc = decode_body(body)
    except DirectoryError as exc:
        out.append(("descriptor", f"refused the body ({exc.reason})"))
        return
    _same(out, "descriptor", "re-encoded body", desc.encode(), body)
    sigs = ident.sign(DESCRIPTOR_CONTEXT, body)
    _same(out, "descriptor", "ed25519 signature", sigs.ed25519, X(d["sig_ed25519"]))
    recorded = Signatures(ed25519=X(d["sig_ed25519"]), mldsa65=X(d["sig_mldsa65"]))
    _same(out, "descriptor", "envelope", envelope(body, recorded), X(d["envelope"]))
    try:
        got = parse_and_verify(X(d["envelope"]), d["now"])
        _same(out, "descriptor", "parsed descriptor", got, desc)
    except DirectoryError as exc:
        out.append(("descriptor", f"refused the signed descriptor ({exc.reason})"))
    for vec in doc["negative"]:
        try:
            parse_and_verify(X(vec["envelope"]), vec["now"])
        except DirectoryError as exc:
            _same(out, vec["name"], "error class", type(exc).__name__, vec["class"])
            _same(out, vec["name"], "reason", exc.reason, vec["error"])
        else:
            out.append((vec["name"], f"accepted a document that must be refused ({vec['error']})"))


def check_directory(doc: dict[str, Any]) -> list[Problem]:
    """Every encoding, identity, descriptor and negative vector in ``doc``.

    A vector file with missing keys or bad hex raises ``KeyError`` / ``ValueError``
    (the linter reports those as a malformed file).
    """
    out: list[Problem] = []
    _check_encoding(doc, out)
    try:
        _check_descriptor(doc, out)
    except QNetError as exc:  # e.g. a seed of the wrong length in the file
        out.append(("descriptor", f"could not run: {exc}"))
    return out
