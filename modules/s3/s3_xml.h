/*
 * A small, careful tag extractor for the few XML answers S3 and STS send (ListObjectsV2,
 * InitiateMultipartUpload, CompleteMultipartUpload, CopyObjectResult, DeleteResult, Error,
 * AssumeRoleWithWebIdentityResponse). Not a general XML parser: elements are found by name in
 * a byte range, which is all these flat documents need; text is entity-decoded (&amp; &lt; &gt;
 * &quot; &apos; &#N; &#xH;) and CDATA sections are kept verbatim, so object keys come back exact.
 */
#ifndef S3_XML_H
#define S3_XML_H

#include "sbuf.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct S3XmlSpan {
    const char *p; /* inner content (between the start and end tags) */
    size_t len;
} S3XmlSpan;

/* Finds the first element named `tag` in [*cursor, end). On success sets *inner and moves
 * *cursor past the element's end tag. `<tag/>` gives an empty span. */
bool s3_xml_next(const char **cursor, const char *end, const char *tag, S3XmlSpan *inner);
/* Decoded text of the first `tag` inside span; NULL if absent or out of memory. */
char *s3_xml_get(S3XmlSpan span, const char *tag);
/* Decodes entities and CDATA of a raw text span (malloc'ed; NULL on ENOMEM or a bad entity). */
char *s3_xml_decode(const char *p, size_t len);
/* Appends s with & < > " ' escaped. */
void s3_xml_escape(SBuf *b, const char *s);

#endif
