#!/bin/sh
# The main job on the local sandbox, from a fresh Debian 12 machine: installs what is missing,
# builds, starts the sandbox (PostgreSQL, S3, neon-local; state in .state/sandbox), loads a
# small demo database if it is empty, and runs the export job — dump -> gzip -> encrypt ->
# S3 — then verifies the archive. Run it again at will; `tests/sandbox/sandbox.sh stop` stops
# the services.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
tools/setup.sh
cmake -S . -B build >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
tests/sandbox/sandbox.sh start
BIN=$ROOT/build/clubio-dr
if [ -f scripts/export-database.lua ]; then
    tests/sandbox/sandbox.sh exec -- "$BIN" run demo-data
    tests/sandbox/sandbox.sh exec -- "$BIN" run export-database
    tests/sandbox/sandbox.sh exec -- "$BIN" run verify-export
else
    "$BIN" list
fi
