# s3 module: integration tests against the sandbox's s3rver (a real S3-compatible server that
# checks SigV4), interop with Debian's aws CLI, and fault injection through a local proxy.
clubio_sandbox_test(integration_s3 integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3.lua)
clubio_sandbox_test(interop_s3_aws interop $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_aws.lua)
clubio_sandbox_test(integration_s3_faults integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_faults.lua)
clubio_sandbox_test(integration_s3_credentials integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_credentials.lua)
clubio_sandbox_test(integration_s3_etag_classes integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_etag_classes.lua)
clubio_sandbox_test(integration_s3_objects integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_objects.lua)
clubio_sandbox_test(integration_s3_uploads integration $<TARGET_FILE:clubio-dr> run ${CMAKE_CURRENT_LIST_DIR}/test_s3_uploads.lua)
