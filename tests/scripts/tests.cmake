# Script and runbook tests: each tests/scripts/test_*.lua runs the scripts end to end on the
# sandbox (PostgreSQL, neon-local, the S3 peer; the AWS stub for rollback-deployment).
file(GLOB SCRIPT_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.lua)
foreach(src ${SCRIPT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(scripts_${name} scripts $<TARGET_FILE:clubio-dr> run ${src})
endforeach()
