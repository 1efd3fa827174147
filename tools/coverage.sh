#!/bin/sh
# C line coverage of the test suite: builds build-cov with -DCLUBIO_COVERAGE=ON (gcov counters),
# runs ctest there, and prints gcovr's summary of runtime/ and modules/ (the C code; the Lua
# scripts are not counted). Installs gcovr (Debian's package) if it is missing.
#
#   tools/coverage.sh                  the whole suite
#   tools/coverage.sh -L 'unit|lua'    ctest arguments: a part of it
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
tools/setup.sh
command -v gcovr >/dev/null 2>&1 || { apt-get install -y -q gcovr >/dev/null || { echo "coverage: cannot install gcovr" >&2; exit 1; }; }
cmake -S . -B build-cov -DCLUBIO_COVERAGE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-cov -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
find build-cov -name '*.gcda' -delete
(cd build-cov && ctest --timeout 900 "$@" >ctest.log 2>&1) || echo "coverage: some tests failed (build-cov/ctest.log); the figure counts what ran" >&2
gcovr -r . --object-directory build-cov --filter 'runtime/' --filter 'modules/' --print-summary -o build-cov/coverage.txt
echo "coverage: per file in build-cov/coverage.txt"
