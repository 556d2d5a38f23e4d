/* Slows CLOCK_MONOTONIC by $SLOW_CLOCK, so that under valgrind time-gated work
   happens about as often per request as at full speed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long base = -1;
static long long factor = 0;
int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) {
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
        const char *f = getenv("SLOW_CLOCK");
        factor = f ? atoll(f) : 1;
        if (factor < 1) factor = 1;
    }
    int r = real_clock_gettime(id, ts);
    if (r == 0 && id == CLOCK_MONOTONIC && factor > 1) {
        long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec;
        if (base < 0) base = ns;
        long long d = base + (ns - base) / factor;
        ts->tv_sec = d / 1000000000LL;
        ts->tv_nsec = d % 1000000000LL;
    }
    return r;
}
