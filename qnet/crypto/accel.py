"""Chooses the per-hop hot path: the Cython accelerator or the pure-Python reference.

Both expose the same functions (see ``qnet.crypto.hopcrypto``) and give identical
bytes. Set ``QNET_PURE=1`` to force the pure-Python path. When the accelerator is
missing, one line says so on first use (logger ``qnet.crypto``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from types import ModuleType

from qnet.crypto import hopcrypto

log = logging.getLogger("qnet.crypto")

FALLBACK_NOTICE = "qnet: Cython accelerator not available ({why}); using the pure-Python path"


def _load() -> tuple[ModuleType, str]:
    if os.environ.get("QNET_PURE"):
        return hopcrypto, "QNET_PURE is set"
    try:
        from qnet import _fast
    except ImportError as exc:
        return hopcrypto, f"import failed: {exc}"
    return _fast, ""


backend, fallback_reason = _load()
BACKEND_NAME: str = backend.BACKEND
if fallback_reason:
    log.warning(FALLBACK_NOTICE.format(why=fallback_reason))

OK = hopcrypto.OK
ERR_LENGTH = hopcrypto.ERR_LENGTH
ERR_POINT = hopcrypto.ERR_POINT
ERR_MAC = hopcrypto.ERR_MAC

# Typed aliases of the selected backend's functions (see ``hopcrypto`` for contracts).
sphinx_unwrap: Callable[[bytes, bytes, bytes], tuple[int, bytes]] = backend.sphinx_unwrap
sphinx_unwrap_batch: Callable[[bytes, bytes, Sequence[bytes]], list[tuple[int, bytes]]] = (
    backend.sphinx_unwrap_batch
)
lioness_encrypt_block: Callable[[bytes, bytes], bytes] = backend.lioness_encrypt_block
lioness_decrypt_block: Callable[[bytes, bytes], bytes] = backend.lioness_decrypt_block
cell_xor: Callable[[bytes, int, bytes], bytes] = backend.cell_xor
cell_xor_batch: Callable[[bytes, int, bytes], bytes] = backend.cell_xor_batch
cell_seal: Callable[[bytes, int, bytes], bytes] = backend.cell_seal
cell_seal_batch: Callable[[bytes, int, bytes], bytes] = backend.cell_seal_batch
cell_open: Callable[[bytes, int, bytes], bytes | None] = backend.cell_open
cell_open_batch: Callable[[bytes, int, bytes], tuple[bytes, int]] = backend.cell_open_batch


_API = (
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
)


def available() -> dict[str, ModuleType]:
    """Every backend that can be imported here, by name (``python`` is always there)."""
    found: dict[str, ModuleType] = {"python": hopcrypto}
    try:
        from qnet import _fast
    except ImportError:
        pass
    else:
        found["cython"] = _fast
    return found


def select(name: str) -> None:
    """Route every hot-path call through backend ``name`` (for tests, the linter, benches)."""
    global backend, BACKEND_NAME
    module = available().get(name)
    if module is None:
        raise LookupError(f"backend {name!r} is not available here")
    backend, BACKEND_NAME = module, module.BACKEND
    for fn in _API:
        globals()[fn] = getattr(module, fn)
