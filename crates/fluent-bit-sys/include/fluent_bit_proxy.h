/*
 * fluent_bit_proxy.h: Fluent Bit's external ("proxy") output plugin ABI, as logferry
 * sees it.
 *
 * Written by the logferry project from the ABI facts recorded in
 * shared/fluent-bit-proxy-abi.md (checked against Fluent Bit 5.1.1). It is not a copy
 * of any Fluent Bit header. Despite the "golang" names, the interface is language
 * neutral: Fluent Bit dlopen()s a shared object and dlsym()s the exported symbols
 * declared at the end of this file.
 *
 * Layout rules (64-bit):
 * - Fluent Bit allocates every structure below; the plugin only reads them, and writes
 *   exactly the fields documented as plugin-written.
 * - Where Fluent Bit's structure is larger than the part a plugin may use, this header
 *   either declares the trailing field as reserved (so our view is exactly as large as
 *   Fluent Bit's: flb_plugin_proxy_def, flb_plugin_proxy_context) or says in a comment
 *   that more Fluent Bit fields follow (so our view is a prefix and must never be
 *   allocated, copied or sized by the plugin: flbgo_output_plugin, flb_api).
 */
#ifndef LOGFERRY_FLUENT_BIT_PROXY_H
#define LOGFERRY_FLUENT_BIT_PROXY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes of a flush (and of the exit callbacks). Anything else counts as an error. */
#define FLB_ERROR 0 /* chunk dropped, counted as an error */
#define FLB_OK 1    /* chunk delivered */
#define FLB_RETRY 2 /* Fluent Bit keeps the chunk and retries later (Retry_Limit) */

/* flb_plugin_proxy_def.type */
#define FLB_PROXY_OUTPUT_PLUGIN 2
/* flb_plugin_proxy_def.proxy: the only proxy kind there is */
#define FLB_PROXY_GOLANG 11

/* flb_plugin_proxy_def.event_type */
#define FLB_PROXY_EVENT_LOGS 0 /* 0 or 1 both mean logs */
#define FLB_PROXY_EVENT_METRICS 2
#define FLB_PROXY_EVENT_TRACES 4

/* Levels of flb_api.log_print and flb_api.output_log_check. */
#define FLB_LOG_ERROR 1
#define FLB_LOG_WARN 2
#define FLB_LOG_INFO 3
#define FLB_LOG_DEBUG 4
#define FLB_LOG_TRACE 5

/*
 * What FLBPluginRegister fills in. Fluent Bit calloc()s it, passes it to the plugin,
 * and keeps it until FLBPluginUnregister.
 *
 * Fluent Bit's own definition ends with one more pointer (its config map), which a
 * proxy plugin leaves zero. We declare it as `config_map` so that our view is never
 * smaller than Fluent Bit's calloc'd copy: a Rust or C value of this type can stand in
 * for Fluent Bit's allocation (the test host does that) without anyone reading past
 * its end.
 */
struct flb_plugin_proxy_def {
    int type;          /* FLB_PROXY_OUTPUT_PLUGIN */
    int proxy;         /* FLB_PROXY_GOLANG */
    int flags;         /* 0 */
    char *name;        /* `Name` in [OUTPUT]; owned by the plugin, must outlive it */
    char *description; /* owned by the plugin, must outlive it */
    int event_type;    /* FLB_PROXY_EVENT_* */
    void *config_map;  /* Fluent Bit's; reserved, leave zero */
};

/*
 * Fluent Bit's services, handed to FLBPluginInit. Function pointers, in this order.
 * Fluent Bit's table continues with entries for custom plugins: never size or copy it.
 */
struct flb_api {
    /* Value of a property of this [OUTPUT] section, or NULL when unset. Keys match
     * case-insensitively, ${ENV} references are already expanded. The string belongs
     * to Fluent Bit: copy it. */
    const char *(*output_get_property)(const char *key, void *o_ins);
    const char *(*input_get_property)(const char *key, void *i_ins);
    /* CMetrics context of the instance. */
    void *(*output_get_cmt_instance)(void *o_ins);
    void *(*input_get_cmt_instance)(void *i_ins);
    /* Fluent Bit's logger, printf-style. */
    void (*log_print)(int level, const char *file, int line, const char *fmt, ...);
    /* Non-zero when `level` is enabled for the instance. */
    int (*input_log_check)(void *i_ins, int level);
    int (*output_log_check)(void *o_ins, int level);
    /* custom-plugin entries follow; they belong to Fluent Bit */
};

/*
 * The proxy's per-instance context. The plugin sets `remote_context` in FLBPluginInit;
 * Fluent Bit passes it back as the first argument of FLBPluginFlushCtx/ExitCtx.
 */
struct flb_plugin_proxy_context {
    void *remote_context; /* plugin-written */
    void *reserved;       /* Fluent Bit's; do not touch */
};

/*
 * What FLBPluginInit receives, once per [OUTPUT] instance. More fields follow that
 * belong to Fluent Bit: this is a prefix of Fluent Bit's structure, so never allocate,
 * copy or size it on the plugin side.
 */
struct flbgo_output_plugin {
    void *reserved;       /* Fluent Bit's (it keeps the name here); do not touch */
    struct flb_api *api;  /* valid until FLBPluginExitCtx returns */
    void *o_ins;          /* the output instance: pass it back to the api */
    struct flb_plugin_proxy_context *context;
    /* more fields follow that belong to Fluent Bit */
};

/*
 * The symbols a plugin exports, looked up by name with dlsym. Required: Register,
 * Init, and FlushCtx or Flush. The typedefs name each signature so that a host can
 * type its dlsym results and a plugin can check its definitions against them.
 */
typedef int (*FLBPluginPreRegister_t)(int hot_reloading);
typedef int (*FLBPluginRegister_t)(struct flb_plugin_proxy_def *def);
typedef int (*FLBPluginInit_t)(struct flbgo_output_plugin *plugin);
typedef int (*FLBPluginFlushCtx_t)(void *remote_ctx, const void *data, size_t len, char *tag);
typedef int (*FLBPluginFlush_t)(const void *data, size_t len, char *tag);
typedef int (*FLBPluginOutputPreRun_t)(int enable_hot_reload);
typedef void (*FLBPluginOutputPreExit_t)(int shutdown_by_hot_reloading);
typedef int (*FLBPluginExitCtx_t)(void *remote_ctx);
typedef int (*FLBPluginExit_t)(void);
typedef void (*FLBPluginUnregister_t)(struct flb_plugin_proxy_def *def);

/* Before FLBPluginRegister; -1 aborts the load. Optional. */
int FLBPluginPreRegister(int hot_reloading);
/* Once per loaded object: fill `def`. 0 = success, -1 aborts the load. */
int FLBPluginRegister(struct flb_plugin_proxy_def *def);
/* Once per [OUTPUT] instance. > 0 = success; 0 or less makes Fluent Bit refuse to start. */
int FLBPluginInit(struct flbgo_output_plugin *plugin);
/* Each chunk (`data` is valid only during the call). Returns FLB_OK/FLB_RETRY/FLB_ERROR. */
int FLBPluginFlushCtx(void *remote_ctx, const void *data, size_t len, char *tag);
/* Each chunk, used only when FLBPluginFlushCtx is not exported. */
int FLBPluginFlush(const void *data, size_t len, char *tag);
/* Before the pipeline runs. Optional. */
int FLBPluginOutputPreRun(int enable_hot_reload);
/* Before exit, per instance. Optional. */
void FLBPluginOutputPreExit(int shutdown_by_hot_reloading);
/* Instance shutdown. Threads the plugin started must be stopped when it returns. */
int FLBPluginExitCtx(void *remote_ctx);
/* Shutdown, used only when FLBPluginExitCtx is not exported. */
int FLBPluginExit(void);
/* Plugin destroyed, right before dlclose. */
void FLBPluginUnregister(struct flb_plugin_proxy_def *def);

#ifdef __cplusplus
}
#endif

#endif /* LOGFERRY_FLUENT_BIT_PROXY_H */
