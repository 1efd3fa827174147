/* Allocation helpers for stages — see stage.h. */
#include "stage.h"

#include <stdlib.h>

RtSource *rt_source_new(void)
{
    return calloc(1, sizeof(RtSource));
}
RtFilter *rt_filter_new(void)
{
    return calloc(1, sizeof(RtFilter));
}
RtSink *rt_sink_new(void)
{
    return calloc(1, sizeof(RtSink));
}

void rt_source_init(RtSource *s, const RtSourceOps *ops, void *self)
{
    *s = (RtSource){.name = ops->name,
                    .self = self,
                    .read = ops->read,
                    .size_hint = ops->size_hint,
                    .results = ops->results,
                    .destroy = ops->destroy};
}

void rt_filter_init(RtFilter *f, const RtFilterOps *ops, void *self)
{
    *f = (RtFilter){.name = ops->name,
                    .self = self,
                    .process = ops->process,
                    .observe = ops->observe,
                    .results = ops->results,
                    .destroy = ops->destroy};
}

void rt_sink_init(RtSink *k, const RtSinkOps *ops, void *self)
{
    *k = (RtSink){.name = ops->name,
                  .self = self,
                  .write = ops->write,
                  .finish = ops->finish,
                  .abort = ops->abort,
                  .results = ops->results,
                  .destroy = ops->destroy};
}

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
