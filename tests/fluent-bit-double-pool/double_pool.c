/* A proxy output plugin that only counts its own worker threads, to show that Fluent Bit
 * starts the worker pool of an external output twice. Written from the proxy ABI facts
 * (shared/fluent-bit-proxy-abi.md); see README.md beside it. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>

struct proxy_def { int type, proxy, flags; char *name, *description; int event_type; };

int FLBPluginRegister(struct proxy_def *def) {
    def->type = 2;   /* output */
    def->proxy = 11; /* "Go" proxy, the only one */
    def->name = "doublepool";
    def->description = "counts its worker threads";
    return 0;
}

int FLBPluginInit(void *plugin) { (void) plugin; return 1; }

/* Fluent Bit names worker M of instance N "flb-out-doublepool.N-wM"; the kernel keeps
 * the first 15 bytes, "flb-out-doublep". */
static int worker_threads(void) {
    char path[300], comm[32];
    int n = 0;
    struct dirent *task;
    DIR *tasks = opendir("/proc/self/task");
    while (tasks && (task = readdir(tasks))) {
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", task->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(comm, sizeof comm, f) && strncmp(comm, "flb-out-doublep", 15) == 0)
            n++;
        if (f) fclose(f);
    }
    if (tasks) closedir(tasks);
    return n;
}

int FLBPluginFlushCtx(void *ctx, const void *data, size_t len, char *tag) {
    static int last = -1;
    int n = worker_threads();
    (void) ctx; (void) data; (void) len; (void) tag;
    if (n != last) /* races between workers only repeat a line */
        fprintf(stderr, "[doublepool] %d worker threads exist\n", last = n);
    return 1; /* FLB_OK */
}

int FLBPluginExitCtx(void *ctx) { (void) ctx; return 1; }
