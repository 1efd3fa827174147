# Integration tests: Lua tests that need the sandbox (tests/sandbox/sandbox.sh).
file(GLOB INTEGRATION_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.lua)
foreach(src ${INTEGRATION_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(integration_${name} integration $<TARGET_FILE:clubio-dr> run ${src})
endforeach()
