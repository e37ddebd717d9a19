"""The client side of QNet: circuits and streams over HTX links.

* ``qnet.client.circuits``: ``CircuitManager`` builds circuits in one round trip,
  reuses one link per entry, and hands out ``Circuit`` objects whose streams are
  ``trio.abc.HalfCloseableStream`` s (``CircuitStream``).

The SOCKS proxy, path selection and guards build on this (they come later).
"""

from qnet.client.circuits import (
    Circuit,
    CircuitBuildError,
    CircuitClosedError,
    CircuitConfig,
    CircuitManager,
    CircuitStream,
    ClientError,
    Path,
    PathSource,
    StreamRefused,
)

__all__ = [
    "Circuit",
    "CircuitBuildError",
    "CircuitClosedError",
    "CircuitConfig",
    "CircuitManager",
    "CircuitStream",
    "ClientError",
    "Path",
    "PathSource",
    "StreamRefused",
]
