# neon: the client against neon-local (tests/sandbox/neon-local), and the real neonctl CLI.
clubio_sandbox_test(neon_client integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_neon_client.lua)
clubio_sandbox_test(neon_neonctl integration sh ${CMAKE_CURRENT_LIST_DIR}/test_neonctl.sh)
