"""qnet.htx.frame_repr: DataFrame's cheaper repr reads the same as hyperframe's own."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, Frame

import qnet.htx  # noqa: F401  (installs the repr)


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 12, 16_384])
@pytest.mark.parametrize("pad", [None, 0, 3])
@pytest.mark.parametrize("view", [False, True])
def test_data_frame_repr_is_unchanged(size: int, pad: int | None, view: bool) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = DataFrame(1, memoryview(data) if view else data)
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    fast = repr(frame)
    assert "_body_repr" in vars(DataFrame)
    assert fast == (f"DataFrame(stream_id=1, flags={frame.flags!r}): {Frame._body_repr(frame)}")
    assert frame.serialize_body() == (bytes([pad]) if pad is not None else b"") + data + bytes(
        pad or 0
    )
