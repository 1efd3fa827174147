#!/usr/bin/env python3
"""Regenerates neon_client_lua.h (the embedded copy of neon_client.lua): run after editing it."""
import os
here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "neon_client.lua"), encoding="utf-8").read()
lines = ["/* Generated from neon_client.lua by embed.py; do not edit. */",
         "static const char neon_client_lua[] ="]
for line in src.splitlines(True):
    lines.append('    "' + line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"')
lines[-1] += ";"
open(os.path.join(here, "neon_client_lua.h"), "w").write("\n".join(lines) + "\n")
