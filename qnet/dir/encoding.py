"""Deterministic CBOR (RFC 8949 §4.2.1) for directory documents: encoder and strict decoder.

Only a subset of CBOR exists here: unsigned and negative integers of at most 64
bits, byte strings, UTF-8 text, arrays, maps, ``true``, ``false`` and ``null``.
There are no floats, no tags, no indefinite lengths and no other simple values.

``encode`` has exactly one output for a value. ``decode`` accepts exactly the
bytes ``encode`` would produce for some value and raises ``MalformedDocument``
(with a ``reason`` from spec/directory.md §2.3) for anything else, including
input that goes over the ``Limits`` it was given. Nothing else escapes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from qnet.errors import MalformedDocument

Key: TypeAlias = int | bytes | str
Value: TypeAlias = "int | bytes | str | bool | None | list[Value] | dict[Key, Value]"

MAX_DEPTH_CAP: Final = 64
UINT_MAX: Final = 2**64 - 1
NINT_MIN: Final = -(2**64)

_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_FALSE, _TRUE, _NULL = 0xF4, 0xF5, 0xF6


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on the work a decoder may do for one document.

    ``max_size`` bytes of input, ``max_depth`` nested arrays/maps (the top level
    is depth 1), ``max_items`` data items in total (every key, value and element
    counts), ``max_string`` bytes in one byte or text string.
    """

    max_size: int = 1 << 20
    max_depth: int = 16
    max_items: int = 1 << 16
    max_string: int = 1 << 16

    def __post_init__(self) -> None:
        for name in ("max_size", "max_depth", "max_items", "max_string"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int")
        # The decoder recurses once per level; keep far from Python's stack limit.
        if self.max_depth > MAX_DEPTH_CAP:
            raise ValueError(f"max_depth must be at most {MAX_DEPTH_CAP}")


DEFAULT_LIMITS: Final = Limits()


# --- encoder --------------------------------------------------------------------------


def _head(major: int, n: int) -> bytes:
    """The shortest head for ``major`` with argument ``n`` (RFC 8949 §4.2.1)."""
    top = major << 5
    if n < 24:
        return bytes([top | n])
    if n < 1 << 8:
        return bytes([top | 24, n])
    if n < 1 << 16:
        return bytes([top | 25]) + n.to_bytes(2, "big")
    if n < 1 << 32:
        return bytes([top | 26]) + n.to_bytes(4, "big")
    return bytes([top | 27]) + n.to_bytes(8, "big")


def _encode_into(value: object, out: list[bytes], depth: int) -> None:
    # bool before int: bool is an int subclass in Python.
    if value is None:
        out.append(bytes([_NULL]))
    elif isinstance(value, bool):
        out.append(bytes([_TRUE if value else _FALSE]))
    elif isinstance(value, int):
        if 0 <= value <= UINT_MAX:
            out.append(_head(_UINT, value))
        elif NINT_MIN <= value < 0:
            out.append(_head(_NINT, -1 - value))
        else:
            raise ValueError("integer outside the 64-bit CBOR range")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(_head(_BYTES, len(data)))
        out.append(data)
    elif isinstance(value, str):
        data = value.encode("utf-8")  # raises UnicodeEncodeError for lone surrogates
        out.append(_head(_TEXT, len(data)))
        out.append(data)
    elif isinstance(value, (list, tuple, dict)) and depth > DEFAULT_LIMITS.max_depth:
        raise ValueError("value nested too deeply to encode")
    elif isinstance(value, (list, tuple)):
        out.append(_head(_ARRAY, len(value)))
        for item in value:
            _encode_into(item, out, depth + 1)
    elif isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, bytes, str)):
                raise TypeError(f"map keys must be int, bytes or str, not {type(k).__name__}")
            kb: list[bytes] = []
            _encode_into(k, kb, depth + 1)
            pairs.append((b"".join(kb), v))
        pairs.sort(key=lambda p: p[0])
        for (a, _), (b, _) in zip(pairs, pairs[1:], strict=False):
            if a == b:
                raise ValueError("two map keys encode to the same bytes")
        out.append(_head(_MAP, len(pairs)))
        for kb_joined, v in pairs:
            out.append(kb_joined)
            _encode_into(v, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in directory CBOR")


def encode(value: Value) -> bytes:
    """The deterministic encoding of ``value``.

    Raises ``TypeError`` for an unsupported type (floats, sets, bool map keys …)
    and ``ValueError`` for an integer outside the 64-bit range or nesting deeper
    than ``DEFAULT_LIMITS.max_depth``. These are caller bugs, not input errors.
    """
    out: list[bytes] = []
    _encode_into(value, out, 1)
    return b"".join(out)


# --- decoder --------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "limits", "items", "pos")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.pos = 0
        self.items = 0

    def take(self, n: int) -> bytes:
        # Lengths are checked against what is left before slicing, so a huge
        # declared length costs nothing.
        if n > len(self.data) - self.pos:
            raise MalformedDocument("truncated", f"need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        """(major type, additional info, argument), refusing non-shortest forms."""
        start = self.pos
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == _SIMPLE:
            return major, info, 0
        if info < 24:
            return major, info, info
        if info > 27:
            if info == 31:
                raise MalformedDocument("indefinite_length", f"offset {start}")
            raise MalformedDocument("reserved_info", f"offset {start}")
        size = 1 << (info - 24)
        arg = int.from_bytes(self.take(size), "big")
        floor = 24 if size == 1 else 1 << (4 * size)  # smallest value needing this width
        if arg < floor:
            raise MalformedDocument("non_shortest", f"offset {start}")
        return major, info, arg

    def count(self) -> None:
        self.items += 1
        if self.items > self.limits.max_items:
            raise MalformedDocument("too_many_items", f"over {self.limits.max_items}")

    def value(self, depth: int) -> Value:
        self.count()
        start = self.pos
        major, info, arg = self.head()
        if major == _UINT:
            return arg
        if major == _NINT:
            return -1 - arg
        if major in (_BYTES, _TEXT):
            if arg > self.limits.max_string:
                raise MalformedDocument("too_large", f"string of {arg} bytes at offset {start}")
            raw = self.take(arg)
            if major == _BYTES:
                return raw
            try:
                return raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise MalformedDocument("invalid_utf8", f"offset {start}") from None
        if major in (_ARRAY, _MAP):
            if depth >= self.limits.max_depth:
                raise MalformedDocument("too_deep", f"offset {start}")
            # Each element takes at least one byte: a cheap bound before looping.
            if arg > len(self.data) - self.pos:
                raise MalformedDocument("truncated", f"{arg} elements at offset {start}")
            if major == _ARRAY:
                return [self.value(depth + 1) for _ in range(arg)]
            return self.map(arg, depth + 1)
        if major == _TAG:
            raise MalformedDocument("unsupported_type", f"tag at offset {start}")
        # Major type 7: only false, true and null are allowed.
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            raise MalformedDocument("unsupported_type", f"float at offset {start}")
        if info == 31:
            raise MalformedDocument("indefinite_length", f"break at offset {start}")
        if info > 27:
            raise MalformedDocument("reserved_info", f"offset {start}")
        raise MalformedDocument("unsupported_type", f"simple value at offset {start}")

    def map(self, n: int, depth: int) -> dict[Key, Value]:
        out: dict[Key, Value] = {}
        previous = b""
        for i in range(n):
            k_start = self.pos
            key = self.value(depth)
            if isinstance(key, bool) or not isinstance(key, (int, bytes, str)):
                raise MalformedDocument("bad_key_type", f"offset {k_start}")
            k_raw = self.data[k_start : self.pos]
            if i and k_raw <= previous:
                reason = "duplicate_key" if k_raw == previous else "unsorted_keys"
                raise MalformedDocument(reason, f"offset {k_start}")
            previous = k_raw
            out[key] = self.value(depth)
        return out


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Value:
    """Decode one complete deterministic-CBOR item.

    Raises ``MalformedDocument`` and nothing else: for non-bytes input
    (``not_bytes``), over ``limits`` (``too_large``, ``too_deep``,
    ``too_many_items``), ``truncated`` or ``trailing_bytes`` input, and every
    non-deterministic or unsupported form (``non_shortest``,
    ``indefinite_length``, ``reserved_info``, ``unsupported_type``,
    ``invalid_utf8``, ``unsorted_keys``, ``duplicate_key``, ``bad_key_type``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedDocument("not_bytes", type(data).__name__)
    raw = bytes(data)
    if len(raw) > limits.max_size:
        raise MalformedDocument("too_large", f"{len(raw)} bytes, limit {limits.max_size}")
    reader = _Reader(raw, limits)
    value = reader.value(0)
    if reader.pos != len(raw):
        raise MalformedDocument("trailing_bytes", f"{len(raw) - reader.pos} after the item")
    return value
