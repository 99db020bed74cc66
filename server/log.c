/* log.c -- see log.h. */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include "buf.h"
#include "jw.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static atomic_int log_format = LOG_TEXT;

void log_init(srv_log_format format) { atomic_store(&log_format, format); }

char *log_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (; *s && n + 5 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[n++] = (char)c;
        } else if (c == '\\') {
            out[n++] = '\\';
            out[n++] = '\\';
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    if (cap)
        out[n] = '\0';
    return out;
}

/* "2026-11-25T17:52:57.123Z" */
static void now_iso(char out[32])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Opens a JSON log line: {"time", "level" -- the caller adds the rest and closes it. */
static void json_line(jw *w, buf *b, const char *level)
{
    char t[32];
    now_iso(t);
    jw_init(w, b);
    jw_obj(w);
    jw_kstr(w, "time", t);
    jw_kstr(w, "level", level);
}

static void emit(buf *b)
{
    buf_putc(b, '\n');
    if (!b->oom)
        fwrite(b->p, 1, b->len, stderr);
    buf_free(b);
}

void log_msg(const char *level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf b = {0};
    if (atomic_load(&log_format) == LOG_JSON) {
        jw w;
        json_line(&w, &b, level);
        jw_kstr(&w, "msg", msg);
        jw_obj_end(&w);
    } else {
        buf_printf(&b, "attnlm: %s", msg);
    }
    emit(&b);
}

void log_req(const log_request *r)
{
    char method[64], path[512];
    log_escape(r->method ? r->method : "", method, sizeof method);
    log_escape(r->path ? r->path : "", path, sizeof path);
    buf b = {0};
    if (atomic_load(&log_format) == LOG_JSON) {
        jw w;
        json_line(&w, &b, r->status >= 500 ? "error" : "info");
        jw_kstr(&w, "request_id", r->id);
        jw_kstr(&w, "trace_id", r->trace_id);
        jw_kstr(&w, "method", method);
        jw_kstr(&w, "path", path);
        jw_kint(&w, "status", r->status);
        jw_kdouble(&w, "duration_ms", (double)(long long)(r->ms * 1000.0 + 0.5) / 1000.0);
        jw_kint(&w, "tokens_in", r->tokens_in);
        jw_kint(&w, "tokens_out", r->tokens_out);
        jw_key(&w, "model");
        if (r->model)
            jw_str(&w, r->model);
        else
            jw_null(&w);
        if (r->note)
            jw_kstr(&w, "note", r->note);
        jw_obj_end(&w);
    } else {
        buf_printf(&b, "attnlm: req=%s %s %s %d %.1fms in=%d out=%d trace=%s", r->id, method, path, r->status, r->ms,
                   r->tokens_in, r->tokens_out, r->trace_id);
        if (r->model) {
            char model[256];
            buf_printf(&b, " model=%s", log_escape(r->model, model, sizeof model));
        }
        if (r->note)
            buf_printf(&b, " (%s)", r->note);
    }
    emit(&b);
}
