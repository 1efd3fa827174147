/*
 * The host flags — see flags.h.
 */
#include "flags.h"
#include "log.h"

RtHostFlags rt_host_global_flags = {.log_level = RT_LOG_INFO, .progress = true};

const RtHostFlags *rt_host_flags(void)
{
    return &rt_host_global_flags;
}
