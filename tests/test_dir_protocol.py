"""The directory request protocol codec (spec/directory.md §9), pure: round trips and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.dir import encoding, protocol
from qnet.dir.protocol import (
    FIELDS,
    MessageReader,
    Op,
    ProtocolLimits,
    Request,
    Response,
    Status,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from qnet.dir.rotation import MixKeySchedule
from qnet.dir.vote import DirectoryParams
from qnet.errors import MalformedDocument

FUZZ = settings(max_examples=300, deadline=None)


def requests() -> st.SearchStrategy[Request]:
    def build(op: Op, digest: bytes, epoch: int, doc: bytes) -> Request:
        f = FIELDS[op]
        return Request(
            op=op,
            digest=digest if "digest" in f else None,
            epoch=epoch if "epoch" in f else None,
            doc=doc if "doc" in f else None,
        )

    return st.builds(
        build,
        st.sampled_from(list(Op)),
        st.binary(min_size=32, max_size=32),
        st.integers(0, 2**48 - 1),
        st.binary(max_size=300),
    )


def responses() -> st.SearchStrategy[Response]:
    return st.one_of(
        st.builds(protocol.ok, st.lists(st.binary(max_size=100), max_size=5)),
        st.builds(
            protocol.error,
            st.sampled_from([s for s in Status if s is not Status.OK]),
            st.from_regex(r"[a-z0-9_]{0,64}", fullmatch=True),
        ),
    )


@FUZZ
@given(requests())
def test_request_round_trip(req: Request) -> None:
    raw = encode_request(req)
    assert decode_request(raw) == req
    assert encode_request(decode_request(raw)) == raw


@FUZZ
@given(responses())
def test_response_round_trip(resp: Response) -> None:
    raw = encode_response(resp)
    assert decode_response(raw) == resp


@FUZZ
@given(st.binary(max_size=400))
def test_decoders_on_junk_raise_only_malformed_document(raw: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(raw)
        except MalformedDocument as exc:
            assert exc.reason
        except Exception as exc:  # pragma: no cover - the failure we look for
            pytest.fail(f"{decode.__name__} raised {exc!r}")


@FUZZ
@given(requests(), st.data())
def test_mutated_requests_raise_only_malformed_document(req: Request, data: st.DataObject) -> None:
    raw = bytearray(encode_request(req))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        back = decode_request(bytes(raw))
    except MalformedDocument:
        return
    assert encode_request(back) == bytes(raw)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["op", "digest", "epoch", "doc", "extra"]),
        st.one_of(
            st.sampled_from([o.value for o in Op]),
            st.binary(max_size=40),
            st.integers(-5, 2**50),
            st.none(),
            st.booleans(),
        ),
    )
)
def test_arbitrary_maps_as_requests(m: dict[encoding.Key, encoding.Value]) -> None:
    try:
        req = decode_request(encoding.encode(m))
    except MalformedDocument:
        return
    assert set(m) == FIELDS[req.op] | {"op"}


def test_each_refusal_has_its_reason() -> None:
    def reason(value: encoding.Value, *, resp: bool = False) -> str:
        with pytest.raises(MalformedDocument) as info:
            (decode_response if resp else decode_request)(encoding.encode(value))
        return info.value.reason

    assert reason([1]) == "bad_type"
    assert reason({"digest": bytes(32)}) == "missing_field"
    assert reason({"op": "get_everything"}) == "bad_value"
    assert reason({"op": 3}) == "bad_type"
    assert reason({"op": "get_consensus", "epoch": 1}) == "unknown_field"
    assert reason({"op": "get_votes"}) == "missing_field"
    assert reason({"op": "get_descriptor", "digest": bytes(31)}) == "bad_length"
    assert reason({"op": "get_votes", "epoch": 2**48}) == "bad_value"
    assert reason({"op": "get_votes", "epoch": -1}) == "bad_value"
    assert reason({"op": "post_vote", "doc": "text"}) == "bad_type"
    assert reason({"status": "fine", "reason": "", "docs": []}, resp=True) == "bad_value"
    assert reason({"status": "ok", "reason": "Bad", "docs": []}, resp=True) == "bad_value"
    assert reason({"status": "refused", "reason": "", "docs": [b"x"]}, resp=True) == "bad_value"
    assert reason({"status": "ok", "reason": ""}, resp=True) == "missing_field"
    with pytest.raises(MalformedDocument) as info:
        decode_request(b"\xa1bopmget_consensus" + b"\x00")
    assert info.value.reason == "trailing_bytes"


def test_limits() -> None:
    small = ProtocolLimits(max_request=64, max_response=64, max_docs=2)
    with pytest.raises(MalformedDocument) as info:
        decode_request(encode_request(protocol.post_vote(bytes(100))), small)
    assert info.value.reason == "too_large"
    with pytest.raises(MalformedDocument):
        decode_response(encode_response(protocol.ok([b"a", b"b", b"c"])), small)
    reader = MessageReader(10)
    reader.feed(b"12345")
    with pytest.raises(MalformedDocument) as info:
        reader.feed(b"123456")
    assert info.value.reason == "too_large"
    with pytest.raises(MalformedDocument) as info:
        MessageReader(10).finish()
    assert info.value.reason == "truncated"
    with pytest.raises(ValueError):
        ProtocolLimits(max_request=0)
    with pytest.raises(ValueError):
        Request(op=Op.GET_VOTES)
    with pytest.raises(ValueError):
        Response(status=Status.REFUSED, docs=(b"x",))
    assert protocol.error(Status.REFUSED, "Not A Code").reason == "other"


def test_mix_key_schedule() -> None:
    params = DirectoryParams(epoch_length=10)
    made: list[int] = []

    def make(e: int) -> str:
        made.append(e)
        return f"k{e}"

    keys = MixKeySchedule(params, grace=4, make=make)
    assert keys.publish(5) == ("k5", "k6")
    assert keys.publish(6) == ("k6", "k7") and made == [5, 6, 7]
    assert keys.usable(61) == [(6, "k6"), (7, "k7"), (5, "k5")]  # grace for epoch 5
    assert keys.usable(64) == [(6, "k6"), (7, "k7")]
    assert keys.erase_expired(64) == [5]
    assert keys.epochs() == [6, 7]
    with pytest.raises(ValueError):
        MixKeySchedule(params, grace=-1, make=make)
