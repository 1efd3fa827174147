#!/bin/sh
# Installs what clubio-dr needs to build and test on Debian 12 (run as root, or with sudo):
# the build toolchain and libraries, the interoperability peers the tests use (PostgreSQL 15,
# openssl, gzip, pigz, psql, pg_dump, the aws CLI), Node.js for the sandbox's npm peers, and
# those npm packages (tests/sandbox/package-lock.json). Safe to run again: it only installs
# what is missing.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)

PKGS="build-essential cmake pkg-config git ca-certificates curl procps
liblua5.4-dev lua-cjson-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libdeflate-dev libpq-dev
postgresql postgresql-client postgresql-contrib openssl gzip pigz awscli python3"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# Node.js and npm: any recent enough install will do (the machine may bring its own).
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Debian's postgresql package creates and starts a default cluster; the tests run their own
# servers on private ports and never touch it.

npm_missing=
for pkg in @20minutes/s3rver @neondatabase/api-client neonctl; do
    [ -d "$ROOT/tests/sandbox/node_modules/$pkg" ] || npm_missing=1
done
if [ -n "$npm_missing" ]; then
    echo "setup: installing the sandbox's npm packages"
    (cd "$ROOT/tests/sandbox" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ok"
