# Interop with the stock tools (openssl enc, gzip, gunzip, zcat, pigz): the real binary, both ways.
add_test(NAME interop_crypto
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/interop/test_crypto_interop.sh $<TARGET_FILE:clubio-dr>)
set_tests_properties(interop_crypto PROPERTIES LABELS interop TIMEOUT 600)
