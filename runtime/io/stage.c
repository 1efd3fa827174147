/* Allocation helpers for stages — see stage.h. */
#include "stage.h"

#include <stdlib.h>

RtSource *rt_source_new(void) { return calloc(1, sizeof(RtSource)); }
RtFilter *rt_filter_new(void) { return calloc(1, sizeof(RtFilter)); }
RtSink *rt_sink_new(void) { return calloc(1, sizeof(RtSink)); }

void rt_source_free(RtSource *s)
{
    if (!s) return;
    if (s->destroy) s->destroy(s->self);
    free(s);
}

void rt_filter_free(RtFilter *f)
{
    if (!f) return;
    if (f->destroy) f->destroy(f->self);
    free(f);
}

void rt_sink_free(RtSink *s)
{
    if (!s) return;
    if (s->destroy) s->destroy(s->self);
    free(s);
}
