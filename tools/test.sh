#!/bin/sh
# The whole test suite from a fresh Debian 12 machine: installs what is missing (tools/setup.sh),
# builds, runs every test (unit, lua, interop, integration — the integration tests start the
# local sandbox themselves and stop it), then builds again with AddressSanitizer and
# UndefinedBehaviorSanitizer and runs the suite once more, less the end-to-end tests (labels dr,
# scripts and e2e: runbooks and scripts driving neon-local, neonctl and the contract check). Those
# run our Lua over the same C paths that the unit, lua, interop and integration tests already put
# under the sanitizers, and take most of the suite's time; ASAN_CTEST_ARGS='' runs them too.
#
#   tools/test.sh            everything
#   tools/test.sh --no-asan  skip the sanitizer pass
#   CTEST_ARGS="-L unit" tools/test.sh   pass arguments to ctest (both passes)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ASAN=1
[ "${1:-}" = "--no-asan" ] && ASAN=0

tools/setup.sh
JOBS=$(nproc 2>/dev/null || echo 2)
start=$(date +%s)

run_suite() { # run_suite BUILD_DIR CTEST_ARGS [cmake args...]
    dir=$1
    args=$2
    shift 2
    echo "== build $dir"
    cmake -S . -B "$dir" "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS" >/dev/null
    echo "== test $dir"
    # shellcheck disable=SC2086
    (cd "$dir" && ctest --output-on-failure --timeout 900 $args)
}

run_suite build "${CTEST_ARGS:-}"
if [ "$ASAN" = 1 ]; then
    # Leak checks stay on; halt on the first report so a finding fails the suite.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        run_suite build-asan "${CTEST_ARGS:-} ${ASAN_CTEST_ARGS-"-LE ^(dr|scripts|e2e)\$"}" \
        -DCLUBIO_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
fi
echo "== all tests passed in $(($(date +%s) - start)) s"
