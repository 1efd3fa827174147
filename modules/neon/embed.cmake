# Writes a C header holding a Lua file as one string constant:
#   cmake -DIN=neon_client.lua -DOUT=neon_client_lua.h -DNAME=neon_client_lua -P embed.cmake
# Run by the build (CMakeLists.txt) whenever the Lua file changes; the header is never committed.
file(READ "${IN}" src)
string(REPLACE "\\" "\\\\" src "${src}")
string(REPLACE "\"" "\\\"" src "${src}")
string(REPLACE "\n" "\\n\"\n    \"" src "${src}")
get_filename_component(from "${IN}" NAME)
file(WRITE "${OUT}.tmp" "/* Generated from ${from} by embed.cmake at build time; do not edit. */\nstatic const char ${NAME}[] =\n    \"${src}\";\n")
file(RENAME "${OUT}.tmp" "${OUT}")
