#!/usr/bin/env bash
# Installs everything QNet needs on a fresh Debian machine, idempotently:
# Debian packages (libsodium-dev, a C toolchain), a virtualenv in .venv, the
# package with its Cython accelerator, and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_deb=()
# clang: libqnet's libFuzzer harnesses (bindings/c, `make fuzz`, run by .ci/run).
for pkg in libsodium-dev build-essential python3-dev pkg-config clang; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_deb+=("$pkg")
done
if ((${#need_deb[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing Debian packages: ${need_deb[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_deb[@]}" >/dev/null
    else
        echo "bootstrap: missing Debian packages (${need_deb[*]}); continuing, the pure-Python path will be used"
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel Cython >/dev/null
# --no-build-isolation: build against the Cython we just installed, and keep
# build output visible (the one-line fallback notice goes to stderr).
.venv/bin/python -m pip install -q --no-build-isolation -e '.[dev]' 2>&1 \
    | grep -E '^qnet:|rror' || true
.venv/bin/python -c 'from qnet.crypto import accel; print(f"bootstrap: qnet installed, hot path = {accel.BACKEND_NAME}")'
