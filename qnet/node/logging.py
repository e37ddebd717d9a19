"""Structured logs for the node, with addresses hidden unless the operator asks.

    log = logging.getLogger("qnet.node")
    log_event(log, logging.INFO, "link_open", peer=safe_addr(ip), circuits=3)

    json: {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "qnet.node",
           "event": "link_open", "peer": "[scrubbed]", "circuits": 3}
    text: 2025-01-01T12:00:00.123Z info qnet.node link_open peer=[scrubbed] circuits=3

Addresses (of peers, clients, destinations) are wrapped with :func:`safe_addr`.
The wrapper decides when the record is formatted, so a logger configured with
``log_addresses = true`` shows them and one without shows ``[scrubbed]``, as
arti's ``safelog`` does. Anything that is not an address should not be wrapped.

Records from other code (``qnet.htx`` and friends) use the same formatter: their
message becomes the ``event``/``msg`` text and they get no extra fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = [
    "SCRUBBED",
    "JsonFormatter",
    "KeyValueFormatter",
    "Sensitive",
    "configure_logging",
    "log_event",
    "safe_addr",
]

SCRUBBED: Final = "[scrubbed]"
_FIELDS: Final = "qnet_fields"


class _Switch:
    """Process-wide: whether sensitive values are shown. Off until configured."""

    show = False


class Sensitive:
    """A value shown in logs only when address logging is on (``[scrubbed]`` otherwise)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value) if _Switch.show else SCRUBBED

    def __repr__(self) -> str:
        return repr(self.value) if _Switch.show else SCRUBBED

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def safe_addr(addr: object) -> Sensitive:
    """Wrap an address (``"1.2.3.4"``, ``("::1", 443)``, ...) for logging."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        addr = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return Sensitive(addr)


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log ``event`` (a short snake_case name) with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields}, stacklevel=2)


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _plain(value: object) -> object:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # Sensitive decides here


def _record_fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, _FIELDS, None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            out.setdefault(key, _plain(value))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _kv(value: object) -> str:
    text = str(_plain(value))
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts level logger event key=value ...``; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{k}={_kv(v)}" for k, v in _record_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    *,
    log_addresses: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every ``qnet.*`` logger to ``stream`` (stderr) in ``fmt`` at ``level``.

    Replaces a handler installed by an earlier call; returns the new handler.
    """
    _Switch.show = log_addresses
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.set_name("qnet-node")
    root = logging.getLogger("qnet")
    for old in [h for h in root.handlers if h.get_name() == "qnet-node"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler
