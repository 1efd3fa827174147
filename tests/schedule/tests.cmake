# The scheduler, alerts and metrics through the binary (no sandbox needed: trivial job scripts
# in a temporary CLUBIO_DR_PATH and a local webhook receiver), and retention against the
# sandbox's S3 server and neon-local.
add_test(NAME schedule_test_schedule COMMAND clubio-dr run ${CMAKE_CURRENT_LIST_DIR}/test_schedule.lua)
set_tests_properties(schedule_test_schedule PROPERTIES LABELS schedule TIMEOUT 300
  ENVIRONMENT "CLUBIO_DR_BIN=$<TARGET_FILE:clubio-dr>;CLUBIO_DR_TEST_DIR=${CMAKE_CURRENT_SOURCE_DIR}")
# the locks, with the schedulers run as an unprivileged user (nobody, through setpriv, as root)
add_test(NAME schedule_test_schedule_locks COMMAND clubio-dr run ${CMAKE_CURRENT_LIST_DIR}/test_schedule_locks.lua)
set_tests_properties(schedule_test_schedule_locks PROPERTIES LABELS schedule TIMEOUT 300
  ENVIRONMENT "CLUBIO_DR_BIN=$<TARGET_FILE:clubio-dr>;CLUBIO_DR_TEST_DIR=${CMAKE_CURRENT_SOURCE_DIR}")
# service jobs: started with the scheduler, restarted after kill -9, one instance across schedulers
add_test(NAME schedule_test_schedule_service COMMAND clubio-dr run ${CMAKE_CURRENT_LIST_DIR}/test_schedule_service.lua)
set_tests_properties(schedule_test_schedule_service PROPERTIES LABELS schedule TIMEOUT 300
  ENVIRONMENT "CLUBIO_DR_BIN=$<TARGET_FILE:clubio-dr>;CLUBIO_DR_TEST_DIR=${CMAKE_CURRENT_SOURCE_DIR}")
file(GLOB SCHEDULE_SANDBOX_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*_sandbox.lua)
foreach(src ${SCHEDULE_SANDBOX_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(schedule_${name} integration $<TARGET_FILE:clubio-dr> run ${src})
endforeach()
