/*
 * Logging to stderr (one line per event) and clock helpers.
 */

#include "lss_runner.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>


void
lss_log(const char *fmt, ...)
{
    char     buf[1024], ts[40];
    va_list  ap;

    lss_iso_time(lss_now_ms(), ts, sizeof(ts));

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    /* one write per line keeps lines whole between threads */
    fprintf(stderr, "%s runner: %s\n", ts, buf);
}


int64_t
lss_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


void
lss_iso_time(int64_t ms, char *buf, size_t len)
{
    time_t     t;
    struct tm  tm;

    t = (time_t) (ms / 1000);
    gmtime_r(&t, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int) (ms % 1000));
}
