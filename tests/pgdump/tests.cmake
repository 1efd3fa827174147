# pgdump: Lua tests against the sandbox's PostgreSQL 15 (round trips with psql and stock
# pg_dump, failure cases). The splitter's unit test is tests/unit/test_pgdump_split.c.
clubio_sandbox_test(pgdump_roundtrip integration $<TARGET_FILE:clubio-dr> run
  ${CMAKE_CURRENT_LIST_DIR}/test_pgdump.lua)
set_tests_properties(pgdump_roundtrip PROPERTIES LABELS "integration;interop")
# Peak RSS of a dump into a slow sink (its own process: VmHWM is per process).
clubio_sandbox_test(pgdump_memory integration $<TARGET_FILE:clubio-dr> run
  ${CMAKE_CURRENT_LIST_DIR}/test_pgdump_memory.lua)
set_tests_properties(pgdump_memory PROPERTIES LABELS "integration")
