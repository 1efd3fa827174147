#!/bin/sh
# The local sandbox: the services clubio-dr talks to, on this machine, with no cloud account.
#
#   tests/sandbox/sandbox.sh start [STATE]   start everything; writes STATE/env.sh
#   tests/sandbox/sandbox.sh stop  [STATE]   stop everything (by pid) and keep the data
#   tests/sandbox/sandbox.sh clean [STATE]   stop and remove STATE
#   tests/sandbox/sandbox.sh exec  [STATE] -- CMD ARGS...   run CMD with the sandbox environment
#   tests/sandbox/sandbox.sh status [STATE]
#
# STATE defaults to .state/sandbox in the checkout. What runs:
#   - PostgreSQL 15 (Debian's packages): the application database. Run as the `postgres` user
#     when we are root (the server refuses root), on a free port on 127.0.0.1 and a private
#     socket folder, wal_level=logical; DATABASE_URL points at database `clubio` as role `app`.
#   - tests/sandbox/aws_stub.py, a stand-in for ECS, SSM and Route53 that checks SigV4 (a mock:
#     no real peer for those runs here); AWS_ENDPOINT_URL_ECS/_SSM/_ROUTE_53 point at it;
#   - @20minutes/s3rver (npm), an S3-compatible server that checks SigV4 signatures, with the
#     buckets BACKUP_S3_BUCKET and ASSETS_S3_BUCKET.
#   - neon-local (tests/sandbox/neon-local.sh), a Neon-API-compatible server, when present.
# Passwords and keys are random per STATE and live only in STATE/env.sh (mode 0600).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CMD=${1:-}
[ $# -gt 0 ] && shift
STATE=${ROOT}/.state/sandbox
if [ $# -gt 0 ] && [ "$1" != "--" ]; then STATE=$1; shift; fi
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
ENVF=$STATE/env.sh

PGBIN=${SANDBOX_PG_BIN:-/usr/lib/postgresql/15/bin}

die() { echo "sandbox: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rand() { head -c 18 /dev/urandom | base64 | tr '+/' 'xy'; }

# Runs a command as the database owner (postgres when we are root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() { [ -f "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS CMD...
    t=$1; shift
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -gt $((t * 10)) ] && return 1
        sleep 0.1
    done
}

start_pg() {
    PGDATA=$STATE/pg/data
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$STATE/pg"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$STATE/pg"
        chmod 700 "$STATE/pg"
        pwfile=$STATE/pg/.pw
        umask 077
        printf '%s\n' "$PG_ADMIN_PW" > "$pwfile"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
        as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" -A scram-sha-256 \
            --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$STATE/pg/initdb.log" 2>&1 ||
            die "initdb failed; see $STATE/pg/initdb.log"
        rm -f "$pwfile"
        umask 022
        cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$STATE/pg'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
maintenance_work_mem = 128MB
max_wal_size = 2GB
EOF
        echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$PGDATA/pg_hba.conf"
        NEW_PG=1
    fi
    if ! alive "$PGDATA/postmaster.pid"; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$STATE/pg/server.log" -w -t 60 start >/dev/null ||
            die "PostgreSQL did not start; see $STATE/pg/server.log"
    fi
    if [ "${NEW_PG:-0}" = 1 ]; then
        as_pg "$PGBIN/psql" -h "$STATE/pg" -p "$PG_PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
            -c "CREATE ROLE app LOGIN PASSWORD '$PG_APP_PW'" -c "CREATE DATABASE clubio OWNER app" \
            >/dev/null || die "cannot create the application database"
    fi
}

start_s3() {
    pidf=$STATE/s3/pid
    alive "$pidf" && return 0
    mkdir -p "$STATE/s3/data"
    [ -d "$HERE/node_modules/@20minutes/s3rver" ] || die "npm packages missing; run tools/setup.sh"
    SANDBOX_S3_SECRET=$AWS_SECRET_ACCESS_KEY nohup node --openssl-legacy-provider "$HERE/s3rver.js" \
        --port "$S3_PORT" --dir "$STATE/s3/data" --buckets "$BACKUP_S3_BUCKET,$ASSETS_S3_BUCKET" \
        --access-key "$AWS_ACCESS_KEY_ID" >"$STATE/s3/server.log" 2>&1 &
    echo $! >"$pidf"
    wait_for 30 grep -q '^ready' "$STATE/s3/server.log" || die "s3rver did not start; see $STATE/s3/server.log"
}

# The AWS control-plane stand-in (ECS, SSM, Route53; see aws_stub.py for why it is a mock). It
# checks SigV4 with the sandbox's AWS key, which it gets through the environment, never argv.
start_aws_stub() {
    pidf=$STATE/aws/pid
    mkdir -p "$STATE/aws"
    if ! alive "$pidf"; then
        rm -f "$STATE/aws/port"
        AWS_STUB_SECRET_KEY=$AWS_SECRET_ACCESS_KEY python3 "$HERE/aws_stub.py" --daemon \
            --pid-file "$pidf" --port-file "$STATE/aws/port" --access-key "$AWS_ACCESS_KEY_ID" \
            --log "$STATE/aws/requests.jsonl" </dev/null || die "the AWS stub did not start"
        wait_for 10 test -s "$STATE/aws/port" || die "the AWS stub did not start"
    fi
    aws_port=$(cat "$STATE/aws/port")
    tmp=$ENVF.aws.tmp
    sed '/^# aws-stub begin/,/^# aws-stub end/d' "$ENVF" >"$tmp"
    cat >>"$tmp" <<EOF
# aws-stub begin (tests/sandbox/aws_stub.py: ECS, SSM, Route53)
export AWS_ENDPOINT_URL_ECS='http://127.0.0.1:$aws_port'
export AWS_ENDPOINT_URL_SSM='http://127.0.0.1:$aws_port'
export AWS_ENDPOINT_URL_ROUTE_53='http://127.0.0.1:$aws_port'
export SANDBOX_AWS_STUB_URL='http://127.0.0.1:$aws_port'
export SANDBOX_AWS_STUB_LOG='$STATE/aws/requests.jsonl'
# aws-stub end
EOF
    chmod 600 "$tmp"
    mv "$tmp" "$ENVF"
}

write_env() {
    umask 077
    cat >"$ENVF" <<EOF
# clubio-dr sandbox environment ($STATE) — generated by tests/sandbox/sandbox.sh
export SANDBOX_STATE='$STATE'
export SANDBOX_PG_BIN='$PGBIN'
export SANDBOX_PG_PORT='$PG_PORT'
export SANDBOX_PG_SOCKET='$STATE/pg'
export SANDBOX_PG_ADMIN_PW='$PG_ADMIN_PW'
export SANDBOX_PG_APP_PW='$PG_APP_PW'
export SANDBOX_PG_ADMIN_URL='postgresql://postgres:$PG_ADMIN_PW@127.0.0.1:$PG_PORT/postgres'
export DATABASE_URL='postgresql://app:$PG_APP_PW@127.0.0.1:$PG_PORT/clubio'
export SANDBOX_S3_PORT='$S3_PORT'
export AWS_ENDPOINT_URL='http://127.0.0.1:$S3_PORT'
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
export AWS_REGION='us-east-1'
export AWS_DEFAULT_REGION='us-east-1'
export BACKUP_S3_BUCKET='$BACKUP_S3_BUCKET'
export ASSETS_S3_BUCKET='$ASSETS_S3_BUCKET'
export BACKUP_ENCRYPTION_KEY='$BACKUP_ENCRYPTION_KEY'
export ENVIRONMENT='sandbox'
EOF
    umask 022
}

cmd_start() {
    if [ -f "$ENVF" ]; then
        # shellcheck disable=SC1090
        . "$ENVF"
        PG_PORT=$SANDBOX_PG_PORT PG_ADMIN_PW=$SANDBOX_PG_ADMIN_PW PG_APP_PW=$SANDBOX_PG_APP_PW
        S3_PORT=$SANDBOX_S3_PORT
    else
        PG_PORT=$(free_port) S3_PORT=$(free_port)
        PG_ADMIN_PW=$(rand) PG_APP_PW=$(rand)
        AWS_ACCESS_KEY_ID=AKIASANDBOX$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
        AWS_SECRET_ACCESS_KEY=$(rand)$(rand)
        BACKUP_S3_BUCKET=clubio-backups ASSETS_S3_BUCKET=clubio-assets
        BACKUP_ENCRYPTION_KEY=$(rand)
        write_env
    fi
    start_pg
    start_s3
    start_aws_stub
    if [ -f "$HERE/neon-local.sh" ]; then
        # shellcheck disable=SC1091
        . "$HERE/neon-local.sh"
        neon_local_start "$STATE" "$ENVF"
    fi
    echo "sandbox: running (state $STATE); environment in $ENVF"
}

cmd_stop() {
    if [ -f "$HERE/neon-local.sh" ]; then
        # shellcheck disable=SC1091
        . "$HERE/neon-local.sh"
        neon_local_stop "$STATE" || true
    fi
    if alive "$STATE/s3/pid"; then
        pid=$(cat "$STATE/s3/pid")
        kill "$pid" 2>/dev/null || true
        wait_for 10 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/s3/pid"
    if alive "$STATE/aws/pid"; then
        kill "$(cat "$STATE/aws/pid")" 2>/dev/null || true
    fi
    rm -f "$STATE/aws/pid"
    if alive "$STATE/pg/data/postmaster.pid"; then
        as_pg "$PGBIN/pg_ctl" -D "$STATE/pg/data" -m fast -w stop >/dev/null 2>&1 ||
            kill -9 "$(head -n1 "$STATE/pg/data/postmaster.pid")" 2>/dev/null || true
    fi
    echo "sandbox: stopped"
}

case "$CMD" in
start) cmd_start ;;
stop) cmd_stop ;;
clean)
    cmd_stop
    rm -rf "$STATE"
    ;;
status)
    alive "$STATE/pg/data/postmaster.pid" && echo "postgresql: running" || echo "postgresql: stopped"
    alive "$STATE/s3/pid" && echo "s3: running" || echo "s3: stopped"
    alive "$STATE/aws/pid" && echo "aws stub: running" || echo "aws stub: stopped"
    ;;
exec)
    [ "${1:-}" = "--" ] && shift
    [ -f "$ENVF" ] || die "no sandbox at $STATE; run: tests/sandbox/sandbox.sh start"
    # shellcheck disable=SC1090
    . "$ENVF"
    exec "$@"
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$CMD" ] || exit 2
    ;;
esac
