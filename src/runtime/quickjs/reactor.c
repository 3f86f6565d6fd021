/*
 * warden's QuickJS-NG reactor: the JavaScript runtime's entry points for the host.
 *
 * Built by `warden runtimes install` from the pinned QuickJS-NG sources (see src/runtime/js.rs)
 * with Debian's clang and wasi-libc, as a WASI reactor. It is one translation unit with the
 * engine (quickjs.c is included below) so that it can reach the engine's private state, such as
 * the seed of Math.random, which the public API does not expose.
 *
 * Exports, the same ABI as warden's Python runtime:
 *   host_alloc(len) -> ptr       a buffer the host writes a turn's code (or a door answer) into
 *   turn(ptr, len) -> status     runs one piece of code to completion: the script, then every
 *                                promise job and timer it left, like a process would before
 *                                exiting. 0 = ok, 1 = an uncaught exception or unhandled
 *                                rejection (printed to stderr), 2 = the engine could not start.
 *                                The buffer is freed by the turn.
 *   warden_claim()               readies a guest made from warden's snapshot for one caller:
 *                                runs wasi-libc's constructors (which read this guest's
 *                                preopens), new seeds for Math.random from WASI randomness (no two
 *                                guests made from one snapshot may share a stream), and
 *                                /workspace as the working directory
 *   warden_reseed()              new seeds for Math.random only (a fork of a live session)
 * Imports:
 *   host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32, the door to warden (0 ok, -1 no host,
 *   -2 host fault), reached from JavaScript as `__warden_host_call(string) -> string`.
 *
 * State lives across turns: a session's globals, functions and loaded data stay in the one
 * context, and a turn's `let`/`const` at top level are global lexical bindings, as in a REPL.
 * Code with `import`/`export` statements runs as an ES module (its bindings are its own).
 */

#include "quickjs.c"
#include "quickjs-libc.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wasi/libc-environ.h>

static JSRuntime *w_rt;
static JSContext *w_ctx;

/* A rejected promise nobody handled yet; checked after each round of jobs. */
typedef struct Rejection {
    JSValue promise;
    JSValue reason;
    struct Rejection *next;
} Rejection;
static Rejection *rejections;
/* The promise of the turn being run: its rejection is reported as the turn's own error. */
static JSValue turn_promise;

__attribute__((import_module("host"), import_name("call")))
int32_t warden_host_call(const char *ptr, int32_t len, char **out_ptr, int32_t *out_len);

__attribute__((export_name("host_alloc")))
void *host_alloc(int32_t len)
{
    return malloc(len > 0 ? (size_t)len : 1);
}

static void track_rejection(JSContext *c, JSValueConst promise, JSValueConst reason, bool is_handled, void *opaque)
{
    (void)opaque;
    Rejection **at = &rejections;
    while (*at && !JS_IsSameValue(c, (*at)->promise, promise))
        at = &(*at)->next;
    if (is_handled) {
        if (*at) {
            Rejection *r = *at;
            *at = r->next;
            JS_FreeValue(c, r->promise);
            JS_FreeValue(c, r->reason);
            free(r);
        }
    } else if (!*at) {
        Rejection *r = malloc(sizeof *r);
        if (r) {
            r->promise = JS_DupValue(c, promise);
            r->reason = JS_DupValue(c, reason);
            r->next = NULL;
            *at = r;
        }
    }
}

/* Prints a thrown value and its stack to stderr, as an uncaught exception. */
static void dump(JSValueConst value)
{
    JS_Throw(w_ctx, JS_DupValue(w_ctx, value));
    js_std_dump_error(w_ctx);
}

/* Prints and forgets the unhandled rejections; returns how many there were. The turn's own
   promise is left for the turn to report. */
static int report_rejections(void)
{
    int n = 0;
    Rejection **at = &rejections;
    while (*at) {
        Rejection *r = *at;
        if (JS_IsSameValue(w_ctx, r->promise, turn_promise)) {
            at = &r->next;
            continue;
        }
        *at = r->next;
        fputs("Uncaught (in promise) ", stderr);
        dump(r->reason);
        JS_FreeValue(w_ctx, r->promise);
        JS_FreeValue(w_ctx, r->reason);
        free(r);
        n++;
    }
    return n;
}

static void forget_rejections(void)
{
    while (rejections) {
        Rejection *r = rejections;
        rejections = r->next;
        JS_FreeValue(w_ctx, r->promise);
        JS_FreeValue(w_ctx, r->reason);
        free(r);
    }
}

/* __warden_host_call(request: string) -> string: one request through warden's door. */
static JSValue js_host_call(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    size_t len;
    const char *req = JS_ToCStringLen(c, &len, argc > 0 ? argv[0] : JS_UNDEFINED);
    if (!req)
        return JS_EXCEPTION;
    char *out = NULL;
    int32_t out_len = 0;
    int32_t rc = warden_host_call(req, (int32_t)len, &out, &out_len);
    JS_FreeCString(c, req);
    if (rc == -1)
        return JS_ThrowInternalError(c, "no host: this run has no door to warden");
    if (rc != 0 || !out)
        return JS_ThrowInternalError(c, "the host faulted while answering the door");
    JSValue v = JS_NewStringLen(c, out, (size_t)out_len);
    free(out);
    return v;
}

static void reseed(void)
{
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof seed) != 0 || seed == 0)
        seed = js__gettimeofday_us() | 1;
    w_ctx->random_state = seed;
}

__attribute__((export_name("warden_reseed")))
void warden_reseed(void)
{
    if (w_ctx)
        reseed();
}

/* The linker's function that runs the C constructors. The snapshot is taken before they ever run:
   wasi-libc's constructor records the guest's preopened directories, and those are only known
   when a guest is made for a caller (a profile's mounts differ from the build's). */
extern void __wasm_call_ctors(void);

__attribute__((export_name("warden_claim")))
void warden_claim(void)
{
    /* The environment too is this guest's: forget any copy read while the snapshot was built. */
    __wasilibc_deinitialize_environ();
    __wasm_call_ctors();
    if (w_ctx)
        reseed();
    if (chdir("/workspace") != 0)
        perror("warden: chdir /workspace");
}

static int eval_module_source(const char *src)
{
    JSValue v = JS_Eval(w_ctx, src, strlen(src), "<warden>", JS_EVAL_TYPE_MODULE);
    if (JS_IsException(v))
        return -1;
    v = js_std_await(w_ctx, v);
    int failed = JS_IsException(v);
    JS_FreeValue(w_ctx, v);
    return failed ? -1 : 0;
}

/* One runtime and context with the std and os modules as globals, like `qjs --std`. */
static int start(void)
{
    w_rt = JS_NewRuntime();
    if (!w_rt)
        return -1;
    js_std_init_handlers(w_rt);
    w_ctx = JS_NewContext(w_rt);
    if (!w_ctx)
        return -1;
    JS_SetModuleLoaderFunc2(w_rt, NULL, js_module_loader, js_module_check_attributes, NULL);
    JS_SetHostPromiseRejectionTracker(w_rt, track_rejection, NULL);
    js_init_module_std(w_ctx, "qjs:std");
    js_init_module_os(w_ctx, "qjs:os");
    js_init_module_bjson(w_ctx, "qjs:bjson");
    js_std_add_helpers(w_ctx, 0, NULL);
    JSValue global = JS_GetGlobalObject(w_ctx);
    JS_SetPropertyStr(w_ctx, global, "__warden_host_call", JS_NewCFunction(w_ctx, js_host_call, "__warden_host_call", 1));
    JS_FreeValue(w_ctx, global);
    turn_promise = JS_UNDEFINED;
    reseed();
    return eval_module_source("import * as std from 'qjs:std';\n"
                              "import * as os from 'qjs:os';\n"
                              "import * as bjson from 'qjs:bjson';\n"
                              "globalThis.std = std;\n"
                              "globalThis.os = os;\n"
                              "globalThis.bjson = bjson;\n");
}

/* Runs promise jobs and timers until nothing is left: a turn ends when its program would. */
static int run_to_completion(void)
{
    int failed = 0;
    for (;;) {
        int next = js_std_loop_once(w_ctx);
        if (next == -2) {
            js_std_dump_error(w_ctx);
            failed = 1;
            continue;
        }
        if (report_rejections())
            failed = 1;
        if (next == -1)
            break;
        if (next > 0)
            usleep((useconds_t)next * 1000);
    }
    return failed;
}

__attribute__((export_name("turn")))
int32_t turn(char *code, int32_t len)
{
    if (!w_ctx && start() != 0) {
        fputs("warden: the JavaScript engine could not start\n", stderr);
        free(code);
        return 2;
    }
    if (!code) {
        /* The host could not allocate the code's buffer: the guest is out of memory. */
        fputs("InternalError: out of memory\n", stderr);
        return 1;
    }
    /* JS_Eval needs a terminating NUL after the source. */
    char *src = realloc(code, (size_t)len + 1);
    if (!src) {
        free(code);
        fputs("InternalError: out of memory\n", stderr);
        return 1;
    }
    src[len] = '\0';
    /* A global script first, with top-level await allowed, so its declarations outlive the
       turn. Only code that cannot be a script but looks like a module (static `import` or
       `export`) runs as a module. */
    JSValue result = JS_Eval(w_ctx, src, (size_t)len, "<input>", JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_ASYNC | JS_EVAL_FLAG_COMPILE_ONLY);
    if (!JS_IsException(result)) {
        result = JS_EvalFunction(w_ctx, result);
    } else if (JS_DetectModule(src, (size_t)len)) {
        JS_FreeValue(w_ctx, JS_GetException(w_ctx));
        result = JS_Eval(w_ctx, src, (size_t)len, "<input>", JS_EVAL_TYPE_MODULE);
    }
    free(src);

    int failed = 0;
    if (JS_IsException(result)) {
        js_std_dump_error(w_ctx);
        failed = 1;
    } else {
        turn_promise = result;
        failed |= run_to_completion();
        if (JS_PromiseState(w_ctx, result) == JS_PROMISE_REJECTED) {
            JSValue reason = JS_PromiseResult(w_ctx, result);
            dump(reason);
            JS_FreeValue(w_ctx, reason);
            failed = 1;
        }
        turn_promise = JS_UNDEFINED;
        forget_rejections();
        JS_FreeValue(w_ctx, result);
    }
    fflush(stdout);
    fflush(stderr);
    return failed;
}
