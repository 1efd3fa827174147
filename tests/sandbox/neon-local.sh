# neon-local in the sandbox: sourced by tests/sandbox/sandbox.sh, which calls
#   neon_local_start STATE ENVFILE   start neon-local (if not running) and append its variables
#   neon_local_stop STATE            stop it (by pid) and, with it, every branch's cluster
# State lives in STATE/neon (owned by postgres when we are root: PostgreSQL refuses root). The
# API key is random per STATE, kept in STATE/neon/api_key (0600), and handed over by file, never
# argv. Every API exchange is recorded in STATE/neon/exchanges.jsonl (NEON_LOCAL_RECORD), which
# tests check against Neon's OpenAPI description (neon-local/openapi_check.js). Two projects: the primary (its main branch is DATABASE_URL, as in production) and one
# for DR. neon_local_start is idempotent: when already running it only rewrites the variables.
# shellcheck shell=sh

NEON_LOCAL_DIR=$(cd "$(dirname "${0}")" 2>/dev/null && pwd)/neon-local
[ -f "$NEON_LOCAL_DIR/neon_local.py" ] || NEON_LOCAL_DIR=${HERE:-.}/neon-local

nl_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

nl_alive() { [ -f "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

nl_api() { # nl_api STATEDIR PATH — GET with the key on stdin-fed headers (never argv)
    printf 'Authorization: Bearer %s\n' "$(cat "$1/api_key")" |
        curl -sf -H @- "http://127.0.0.1:$(cat "$1/port")/api/v2$2"
}

nl_json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

neon_local_start() {
    nl_state=$1/neon
    nl_envf=$2
    mkdir -p "$nl_state"
    chmod 700 "$nl_state"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$nl_state"
    if [ ! -s "$nl_state/api_key" ]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' 'xy' >"$nl_state/api_key")
        [ "$(id -u)" -eq 0 ] && chown postgres: "$nl_state/api_key"
    fi
    if ! nl_alive "$nl_state/server.pid"; then
        [ -s "$nl_state/api_port" ] ||
            python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
                >"$nl_state/api_port"
        nl_as_pg python3 "$NEON_LOCAL_DIR/neon_local.py" --daemon --state "$nl_state" \
            --port "$(cat "$nl_state/api_port")" --project clubio-primary --project clubio-dr \
            --database clubio --role app --history-retention "${NEON_LOCAL_HISTORY_RETENTION:-86400}" \
            --record "$nl_state/exchanges.jsonl" \
            </dev/null || { echo "sandbox: neon-local did not start; see $nl_state/server.log" >&2; return 1; }
    fi
    nl_uri=$(nl_api "$nl_state" "/projects/clubio-primary/connection_uri?database_name=clubio&role_name=app" |
        nl_json 'd["uri"]') || { echo "sandbox: neon-local does not answer" >&2; return 1; }
    # Rewrite our block of the environment file (idempotent).
    nl_tmp=$nl_envf.neon.tmp
    sed '/^# neon-local begin/,/^# neon-local end/d' "$nl_envf" >"$nl_tmp"
    cat >>"$nl_tmp" <<EOF
# neon-local begin (tests/sandbox/neon-local.sh)
export NEON_LOCAL_STATE='$nl_state'
export NEON_LOCAL_RECORD='$nl_state/exchanges.jsonl'
export NEON_API_HOST='http://127.0.0.1:$(cat "$nl_state/port")/api/v2'
export NEON_API_KEY='$(cat "$nl_state/api_key")'
export NEON_PROJECT_ID='clubio-primary'
export NEON_PROJECT_ID_PRIMARY='clubio-primary'
export NEON_PROJECT_ID_DR='clubio-dr'
export DATABASE_URL='$nl_uri'
# neon-local end
EOF
    chmod 600 "$nl_tmp"
    mv "$nl_tmp" "$nl_envf"
}

neon_local_stop() {
    nl_state=$1/neon
    if nl_alive "$nl_state/server.pid"; then
        nl_pid=$(head -n1 "$nl_state/server.pid")
        kill "$nl_pid" 2>/dev/null || true
        i=0
        while kill -0 "$nl_pid" 2>/dev/null && [ $i -lt 900 ]; do
            i=$((i + 1))
            sleep 0.1
        done
        kill -0 "$nl_pid" 2>/dev/null && kill -9 "$nl_pid" 2>/dev/null
    fi
    rm -f "$nl_state/server.pid"
    return 0
}
