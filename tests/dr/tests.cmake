# DR tests (dr-setup, dr-failover, dr-test) on the sandbox's neon-local. They run one at a time
# (RESOURCE_LOCK): each holds a replication slot and sync workers on the shared primary and DR
# clusters, which allow 10 senders and slots and 4 logical replication workers.
file(GLOB DR_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.lua)
foreach(src ${DR_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(dr_${name} dr $<TARGET_FILE:clubio-dr> run ${src})
  set_tests_properties(dr_${name} PROPERTIES RESOURCE_LOCK dr_replication)
endforeach()
