# The change archive (modules/changes, archive-changes, restore-from-s3 --to): end to end on the
# sandbox, and the pgoutput decoder on known bytes (tests/unit/test_changes_decode.c).
file(GLOB CHANGES_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.lua)
foreach(src ${CHANGES_TESTS})
  get_filename_component(name ${src} NAME_WE)
  clubio_sandbox_test(changes_${name} integration $<TARGET_FILE:clubio-dr> run ${src})
endforeach()
