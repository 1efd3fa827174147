# neon: the client against neon-local (tests/sandbox/neon-local), and the real neonctl CLI.
clubio_sandbox_test(neon_client integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_neon_client.lua)
clubio_sandbox_test(neon_neonctl integration sh ${CMAKE_CURRENT_LIST_DIR}/test_neonctl.sh)
add_test(NAME neon_local_restart COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_neon_local_restart.sh $<TARGET_FILE:clubio-dr>)
set_tests_properties(neon_local_restart PROPERTIES LABELS integration TIMEOUT 300)
# These two move clubio-primary's default branch for a moment (set-default and back); tests
# that read that default take the same lock so they never see the moment.
set_tests_properties(neon_client neon_neonctl PROPERTIES RESOURCE_LOCK neon_primary_default)
