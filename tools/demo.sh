#!/bin/sh
# The main job on the local sandbox, from a fresh Debian 12 machine: installs what is missing,
# builds, starts the sandbox (PostgreSQL, S3, neon-local; state in .state/sandbox), and runs
# tools/demo.lua: sample data, the daily Neon backup, the export (dump -> gzip -> encrypt ->
# S3), both verifications and a restore of the export into a scratch database, with a report.
# Run it again at will; `tests/sandbox/sandbox.sh stop` stops the services.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
tools/setup.sh
cmake -S . -B build >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
tests/sandbox/sandbox.sh start
BIN=$ROOT/build/clubio-dr
tests/sandbox/sandbox.sh exec -- "$BIN" run tools/demo.lua "$BIN"
