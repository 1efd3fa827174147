# Verification tests that need the sandbox: restore tests into a scratch database on the
# sandbox's PostgreSQL and into neon-local branches, the runbook's queries, the history.
file(GLOB VERIFY_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.lua)
foreach(src ${VERIFY_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(verify_${name} integration $<TARGET_FILE:clubio-dr> run ${src})
endforeach()
