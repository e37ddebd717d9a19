"""Build glue for the optional Cython accelerator (``qnet._fast``).

The accelerator links libsodium. When Cython, a C compiler or libsodium is
missing, the build prints one line and the package installs without it; the
pure-Python path then gives the same bytes, only slower.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

FALLBACK_LINE = (
    "qnet: Cython accelerator not built ({why}); installing the pure-Python path"
)


class OptionalBuildExt(build_ext):
    """A build_ext that turns any failure into a one-line notice."""

    failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means fallback
            self._fallback(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def copy_extensions_to_source(self) -> None:
        if not self.failed:
            super().copy_extensions_to_source()

    def _fallback(self, exc: BaseException) -> None:
        if self.failed:  # later steps fail because the first one did: one line is enough
            return
        self.failed = True
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(FALLBACK_LINE.format(why=why[:160]), file=sys.stderr)


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("QNET_NO_EXT"):
        print(FALLBACK_LINE.format(why="QNET_NO_EXT is set"), file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print(FALLBACK_LINE.format(why="Cython is not installed"), file=sys.stderr)
        return []
    from setuptools import Extension

    ext = Extension(
        "qnet._fast",
        sources=["cext/_fast.pyx"],
        libraries=["sodium"],
        extra_compile_args=["-O3"],
    )
    try:
        return cythonize([ext], language_level=3, quiet=True)
    except Exception as exc:  # noqa: BLE001
        print(FALLBACK_LINE.format(why=f"cythonize failed: {exc}"), file=sys.stderr)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
