# neon: the client against neon-local (tests/sandbox/neon-local), and the real neonctl CLI.
clubio_sandbox_test(neon_client integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_neon_client.lua)
clubio_sandbox_test(neon_neonctl integration sh ${CMAKE_CURRENT_LIST_DIR}/test_neonctl.sh)
add_test(NAME neon_local_restart COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_neon_local_restart.sh $<TARGET_FILE:clubio-dr>)
set_tests_properties(neon_local_restart PROPERTIES LABELS "integration;e2e" TIMEOUT 300)
# These two move clubio-primary's default branch for a moment (set-default and back); tests
# that read that default take the same lock so they never see the moment.
set_tests_properties(neon_client neon_neonctl PROPERTIES RESOURCE_LOCK neon_primary_default)
set_tests_properties(neon_neonctl PROPERTIES LABELS "integration;e2e")
# The contract: every exchange recorded by neon-local (the scripts run here, and every test so
# far) checked against Neon's OpenAPI description. It sets up DR replication on the shared
# projects, so it takes the DR tests' lock; it runs after the other tests that call Neon (the
# DR tests' dr-test among them) when they are in the same run, so that their exchanges are
# checked too.
clubio_sandbox_test(neon_contract integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_neon_contract.lua)
set_tests_properties(neon_contract PROPERTIES LABELS "integration;e2e" RESOURCE_LOCK dr_replication TIMEOUT 1800
  DEPENDS "neon_client;neon_neonctl;integration_test_scripts_neon;scripts_test_data_corruption;scripts_test_daily_backup_failure;verify_test_restore_neon;dr_test_dr_aws;dr_test_dr_failover;dr_test_dr_restore;dr_test_dr_site;dr_test_dr_test")
