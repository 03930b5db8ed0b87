/*
 * The test host's `flb_api.log_print`: a printf-style C variadic, which Rust cannot
 * define. It formats the line with vsnprintf and hands level and text to the Rust
 * sink registered with logferry_e2e_set_log_sink (see src/host/log.rs).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*logferry_e2e_log_sink)(int level, const char *file, int line,
                                      const char *message);

static logferry_e2e_log_sink sink;

void logferry_e2e_set_log_sink(logferry_e2e_log_sink new_sink) {
    __atomic_store_n(&sink, new_sink, __ATOMIC_RELEASE);
}

void logferry_e2e_log_print(int level, const char *file, int line, const char *fmt, ...) {
    char small[1024];
    char *heap = NULL;
    const char *message = small;
    va_list args, again;

    va_start(args, fmt);
    va_copy(again, args);
    int n = vsnprintf(small, sizeof small, fmt, args);
    va_end(args);
    if (n < 0) {
        message = "(log_print: invalid format)";
    } else if ((size_t)n >= sizeof small) {
        heap = malloc((size_t)n + 1);
        if (heap != NULL) {
            vsnprintf(heap, (size_t)n + 1, fmt, again);
            message = heap;
        }
    }
    va_end(again);

    logferry_e2e_log_sink current = __atomic_load_n(&sink, __ATOMIC_ACQUIRE);
    if (current != NULL) {
        current(level, file, line, message);
    }
    free(heap);
}
