#!/bin/sh
# The module rule, checked: lua.h, lauxlib.h, lualib.h and lua_api.h reach (directly or through
# other headers) only the Lua bindings and the host's Lua glue. A C core that starts to include
# one of them, or a header of a core that does, fails this test with the file and the chain.
#
#   check_lua_boundary.sh CC SOURCE_DIR [-Idir ...]
#
# Each C file under runtime/ and modules/ is run through the compiler's dependency scan
# (CC -MM -MG), which follows every include the way the build does.
#
# Allowed:
#   */*_lua.c        the bindings: one thin <name>_lua.c per module, plus the host's own modules
#                    (runtime/pipe_lua.c, std_lua.c, http_lua.c)
#   runtime/host.c   builds the Lua state, loads the preloaded modules and runs scripts
#   runtime/lua_api.c implements lua_api.h, the C API the bindings use (stages, errors, options)
#   runtime/main.c   the CLI: creates the Lua host (rt_host_new) and runs a script or -e chunk
set -u
CC=$1
SRC=$2
shift 2
ALLOWED_GLUE="runtime/host.c runtime/lua_api.c runtime/main.c"
LUA_RE='(^|/)(lua|lauxlib|lualib|lua_api)\.h$'

cd "$SRC" || exit 2
bad=0
checked=0
bindings_seen=0
for f in runtime/*.c runtime/io/*.c modules/*/*.c; do
    [ -f "$f" ] || continue
    deps=$("$CC" -MM -MG -D_GNU_SOURCE -I. -Iruntime "$@" "$f" 2>&1) || {
        echo "FAIL cannot scan $f: $deps"
        bad=$((bad + 1))
        continue
    }
    checked=$((checked + 1))
    hits=$(printf '%s\n' "$deps" | tr ' \\' '\n\n' | grep -E "$LUA_RE" | sort -u | tr '\n' ' ')
    case "$f" in
    *_lua.c)
        # a binding: it must reach lua.h (else this scan is broken and proves nothing)
        if [ -n "$hits" ]; then bindings_seen=$((bindings_seen + 1)); else
            echo "FAIL the scan does not see lua.h in the binding $f (broken check?)"
            bad=$((bad + 1))
        fi
        continue ;;
    esac
    allowed=no
    for g in $ALLOWED_GLUE; do [ "$f" = "$g" ] && allowed=yes; done
    if [ $allowed = yes ]; then
        echo "ok   $f (host glue)"
    elif [ -n "$hits" ]; then
        echo "FAIL $f reaches $hits- a C core must not see Lua; move the Lua part to a *_lua.c binding"
        bad=$((bad + 1))
    fi
done
echo "checked $checked C files, $bindings_seen bindings"
if [ "$checked" -lt 10 ] || [ "$bindings_seen" -lt 3 ]; then
    echo "FAIL too few files seen: is $SRC the source tree?"
    bad=$((bad + 1))
fi
if [ $bad -eq 0 ]; then echo "1 passed, 0 failed"; exit 0; fi
echo "0 passed, 1 failed"
exit 1
