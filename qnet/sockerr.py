"""Reading the real error out of Trio's connection failures.

``trio.open_tcp_stream`` raises a bare ``OSError`` whose ``__cause__`` is an
exception group holding one error per address tried; callers that map errors to
reply codes (an exit's END reason, a SOCKS reply) need the errno inside.
"""

from __future__ import annotations


def errno_of(exc: BaseException) -> int | None:
    """The errno of an ``OSError``, looking inside Trio's "all attempts failed" group."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for inner in cause.exceptions:
            found = errno_of(inner)
            if found is not None:
                return found
    return None
