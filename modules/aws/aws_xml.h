/*
 * A small, careful tag extractor for the few XML answers AWS sends, S3 and STS (ListObjectsV2,
 * InitiateMultipartUpload, CompleteMultipartUpload, CopyObjectResult, DeleteResult, Error,
 * AssumeRoleWithWebIdentityResponse). Not a general XML parser: elements are found by name in
 * a byte range, which is all these flat documents need; text is entity-decoded (&amp; &lt; &gt;
 * &quot; &apos; &#N; &#xH;) and CDATA sections are kept verbatim, so object keys come back exact.
 */
#ifndef AWS_XML_H
#define AWS_XML_H

#include "runtime/sbuf.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct AwsXmlSpan {
    const char *p; /* inner content (between the start and end tags) */
    size_t len;
} AwsXmlSpan;

/* Finds the first element named `tag` in [*cursor, end). On success sets *inner and moves
 * *cursor past the element's end tag. `<tag/>` gives an empty span. */
bool aws_xml_next(const char **cursor, const char *end, const char *tag, AwsXmlSpan *inner);
/* Decoded text of the first `tag` inside span; NULL if absent or out of memory. */
char *aws_xml_get(AwsXmlSpan span, const char *tag);
/* Decodes entities and CDATA of a raw text span (malloc'ed; NULL on ENOMEM or a bad entity). */
char *aws_xml_decode(const char *p, size_t len);
/* Appends s with & < > " ' escaped. */
void aws_xml_escape(SBuf *b, const char *s);

#endif
