/* chat.c -- POST /v1/chat/completions: OpenAI's chat shapes over the same
 * generation as /v1/completions.  The messages are rendered through the chat
 * template into the byte text the model continues; the answer's writer gives
 * chat.completion objects and chat.completion.chunk events.  POST
 * /v1/chat/render shows the rendered text.
 *
 * A chat template is a small file of lines `key = "JSON string"` (blank lines
 * and # comments aside): system_prefix, system_suffix, user_prefix,
 * user_suffix, assistant_prefix, assistant_suffix, generation_prompt, and stop
 * (up to CHAT_MAX_STOP times).  Each message becomes its role's prefix, its
 * content and its role's suffix; the generation prompt follows the last.
 */
#define _POSIX_C_SOURCE 200809L
#include "err.h"
#include "internal.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAT_MAX_STOP 4
#define CHAT_DEFAULT_MAX_TOKENS 256

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLES };

struct api_chat_template {
    char *prefix[ROLES], *suffix[ROLES];
    char *generation_prompt;
    char *stop[CHAT_MAX_STOP];
    int n_stop;
};

/* The built-in template: a plain transcript.  The shipped models were trained
 * on prose, not on dialogues; this is the text such a model can best continue
 * as a reply, and the stop string ends the reply where the next turn would begin. */
static const struct {
    const char *prefix[ROLES], *suffix[ROLES], *generation_prompt, *stop;
} BUILT_IN = {
    .prefix = {"", "User: ", "Assistant: "},
    .suffix = {"\n\n", "\n", "\n"},
    .generation_prompt = "Assistant: ",
    .stop = "\nUser:",
};

static const char *const KEYS[] = {"system_prefix",    "user_prefix",      "assistant_prefix", "system_suffix",
                                   "user_suffix",      "assistant_suffix", "generation_prompt", "stop"};

void api_chat_template_free(api_chat_template *t)
{
    if (!t)
        return;
    for (int r = 0; r < ROLES; r++) {
        free(t->prefix[r]);
        free(t->suffix[r]);
    }
    free(t->generation_prompt);
    for (int i = 0; i < t->n_stop; i++)
        free(t->stop[i]);
    free(t);
}

/* Sets key k of t to v (copied); -1 when the stop strings are too many. */
static int set_key(api_chat_template *t, int k, const char *v)
{
    char **slot = k < 3 ? &t->prefix[k] : k < 6 ? &t->suffix[k - 3] : k == 6 ? &t->generation_prompt : NULL;
    if (!slot) {
        if (t->n_stop == CHAT_MAX_STOP)
            return -1;
        slot = &t->stop[t->n_stop++];
    }
    free(*slot);
    return (*slot = strdup(v)) ? 0 : -1;
}

api_chat_template *api_chat_template_load(const char *path, char *err, size_t errlen)
{
    api_chat_template *t = calloc(1, sizeof *t);
    if (!t) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    bool fail = false;
    for (int r = 0; r < ROLES && !fail; r++)
        fail = set_key(t, r, BUILT_IN.prefix[r]) < 0 || set_key(t, 3 + r, BUILT_IN.suffix[r]) < 0;
    if (fail || set_key(t, 6, BUILT_IN.generation_prompt) < 0) {
        api_chat_template_free(t);
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    if (!path || !*path) {
        if (set_key(t, 7, BUILT_IN.stop) < 0) {
            api_chat_template_free(t);
            err_set(err, errlen, "out of memory");
            return NULL;
        }
        return t;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        err_set(err, errlen, "cannot read --chat-template %s: %s", path, strerror(errno));
        api_chat_template_free(t);
        return NULL;
    }
    char line[4096];
    int n = 0;
    while (!fail && fgets(line, sizeof line, f)) {
        n++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            err_set(err, errlen, "--chat-template %s:%d: a line longer than %zu bytes", path, n, sizeof line - 2);
            fail = true;
            break;
        }
        char *p = line + strspn(line, " \t");
        if (*p == '#' || *p == '\n' || *p == '\r' || !*p)
            continue;
        size_t kl = strcspn(p, " \t=");
        int k = -1;
        for (int i = 0; i < (int)(sizeof KEYS / sizeof *KEYS); i++)
            if (strlen(KEYS[i]) == kl && strncmp(p, KEYS[i], kl) == 0)
                k = i;
        char *eq = strchr(p, '=');
        if (k < 0 || !eq || eq < p + kl) {
            err_set(err, errlen, "--chat-template %s:%d: expected `KEY = \"string\"` with KEY one of system_prefix, "
                    "system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix, generation_prompt, stop",
                    path, n);
            fail = true;
            break;
        }
        cJSON *v = cJSON_Parse(eq + 1);
        if (!cJSON_IsString(v) || strlen(v->valuestring) > API_MAX_STOP_BYTES * 4 ||
            (k == 7 && (!*v->valuestring || strlen(v->valuestring) > API_MAX_STOP_BYTES))) {
            err_set(err, errlen, "--chat-template %s:%d: the value of %s must be one JSON string%s", path, n, KEYS[k],
                    k == 7 ? " of 1 to 256 bytes" : " of at most 1,024 bytes");
            fail = true;
        } else if (set_key(t, k, v->valuestring) < 0) {
            err_set(err, errlen, "--chat-template %s:%d: at most %d stop strings", path, n, CHAT_MAX_STOP);
            fail = true;
        }
        cJSON_Delete(v);
    }
    fclose(f);
    if (fail) {
        api_chat_template_free(t);
        return NULL;
    }
    return t;
}

/* ---- rendering -------------------------------------------------------------- */

/* The text of one message's content: a string, or an array of text parts. */
static int content_text(const cJSON *c, int i, buf *out, api_error *e)
{
    if (cJSON_IsString(c)) {
        buf_puts(out, c->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(c)) {
        api_error_set(e, 400, "messages", "messages[%d].content must be a string or an array of text parts", i);
        return -1;
    }
    const cJSON *part;
    int k = 0;
    cJSON_ArrayForEach(part, c)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type"),
                    *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text)) {
            api_error_set(e, 400, "messages",
                          "messages[%d].content[%d] must be {\"type\": \"text\", \"text\": ...}: this model reads "
                          "text only",
                          i, k);
            return -1;
        }
        buf_puts(out, text->valuestring);
        k++;
    }
    return 0;
}

/* Renders "messages" of o through t into out (NUL-terminated); -1 with e naming "messages". */
static int render(const api_chat_template *t, const cJSON *o, buf *out, api_error *e)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (!cJSON_IsArray(msgs) || !msgs->child) {
        api_error_set(e, 400, "messages", "messages must be a non-empty array of {\"role\", \"content\"}");
        return -1;
    }
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs)
    {
        static const char *const allowed[] = {"role", "content", "name", NULL};
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            api_error_set(e, 400, "messages", "messages[%d] must be an object with a string \"role\"", i);
            return -1;
        }
        for (const cJSON *f = m->child; f; f = f->next) {
            bool ok = false;
            for (int a = 0; allowed[a]; a++)
                ok |= strcmp(f->string, allowed[a]) == 0;
            if (!ok && !cJSON_IsNull(f)) {
                api_error_set(e, 400, "messages", "messages[%d].%.40s is not supported (no tools, no audio)", i,
                              f->string);
                return -1;
            }
        }
        const char *r = role->valuestring;
        int ri = strcmp(r, "system") == 0 || strcmp(r, "developer") == 0 ? ROLE_SYSTEM
                 : strcmp(r, "user") == 0                                ? ROLE_USER
                 : strcmp(r, "assistant") == 0                           ? ROLE_ASSISTANT
                                                                         : -1;
        if (ri < 0) {
            api_error_set(e, 400, "messages",
                          "messages[%d].role \"%.32s\" is not one of system, developer, user, assistant", i, r);
            return -1;
        }
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        buf_puts(out, t->prefix[ri]);
        if (content && !cJSON_IsNull(content) && content_text(content, i, out, e) < 0)
            return -1;
        buf_puts(out, t->suffix[ri]);
        i++;
    }
    buf_puts(out, t->generation_prompt);
    if (!buf_cstr(out)) {
        api_error_set(e, 500, NULL, "out of memory");
        return -1;
    }
    return 0;
}

static const api_chat_template *template_of(const api_ctx *ctx, api_chat_template **made)
{
    *made = NULL;
    if (ctx->chat)
        return ctx->chat;
    return *made = api_chat_template_load(NULL, NULL, 0);
}

/* ---- POST /v1/chat/completions ------------------------------------------------ */

static gen_state *gs(const api_job *j) { return j->state; }

/* Fields OpenAI's clients send that change nothing here when they hold their
 * defaults, and are refused (naming them) otherwise. */
static int harmless_defaults(const cJSON *o, api_error *e)
{
    const cJSON *v;
    if ((v = json_field(o, "tools")) && (!cJSON_IsArray(v) || v->child)) {
        api_error_set(e, 400, "tools", "tools are not supported: this model calls no functions");
        return -1;
    }
    if ((v = json_field(o, "tool_choice")) &&
        !(cJSON_IsString(v) && (strcmp(v->valuestring, "none") == 0 || strcmp(v->valuestring, "auto") == 0))) {
        api_error_set(e, 400, "tool_choice", "tool_choice can only be \"none\" or \"auto\" (there are no tools)");
        return -1;
    }
    if ((v = json_field(o, "response_format"))) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0) {
            api_error_set(e, 400, "response_format", "response_format can only be {\"type\": \"text\"}");
            return -1;
        }
    }
    if ((v = json_field(o, "modalities")) &&
        !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child) &&
          strcmp(v->child->valuestring, "text") == 0)) {
        api_error_set(e, 400, "modalities", "modalities can only be [\"text\"]");
        return -1;
    }
    bool b;
    if (json_get_bool(o, "parallel_tool_calls", &b, e) < 0 || json_get_bool(o, "store", &b, e) < 0)
        return -1;
    const char *user = NULL;
    if (json_get_string(o, "user", &user, e) < 0)
        return -1;
    if ((v = json_field(o, "metadata")) && !cJSON_IsObject(v)) {
        api_error_set(e, 400, "metadata", "metadata must be an object");
        return -1;
    }
    return 0;
}

static int chat_parse(api_job *j, const cJSON *o, uint64_t seed, const char *request_id, api_error *e)
{
    gen_state *g = gs(j);
    gen_params *gp = &g->gp;
    long long top = 0, n = 1, mct = CHAT_DEFAULT_MAX_TOKENS;
    bool logprobs = false;
    if (gen_parse_session(j, o, e) < 0 || harmless_defaults(o, e) < 0 || json_get_bool(o, "logprobs", &logprobs, e) < 0 ||
        json_get_int(o, "top_logprobs", 0, OPENAI_MAX_LOGPROBS, &top, e) < 0 ||
        json_get_int(o, "n", 1, API_MAX_CHOICES, &n, e) < 0)
        return -1;
    int has_mct = json_get_int(o, "max_completion_tokens", 0, j->ctx->limits.max_new_tokens, &mct, e);
    if (has_mct < 0)
        return -1;
    if (has_mct && json_field(o, "max_tokens")) {
        api_error_set(e, 400, "max_tokens", "give max_completion_tokens or max_tokens, not both");
        return -1;
    }
    if (top && !logprobs) {
        api_error_set(e, 400, "top_logprobs", "top_logprobs needs \"logprobs\": true");
        return -1;
    }
    gp->logprobs = logprobs;
    gp->top = (int)top;
    gp->n = (int)n;
    if (gen_parse_stream_options(gp, o, e) < 0)
        return -1;
    api_chat_template *made;
    const api_chat_template *t = template_of(j->ctx, &made);
    buf text = {0};
    int rc = t ? render(t, o, &text, e) : -1;
    if (!t)
        api_error_set(e, 500, NULL, "out of memory");
    if (rc == 0 && text.len + 1 > (size_t)j->ctx->limits.max_input_tokens) {
        api_error_set(e, 413, "messages", "the rendered messages are %zu tokens; the limit is %d", text.len + 1,
                      j->ctx->limits.max_input_tokens);
        rc = -1;
    }
    if (rc == 0 && (!(j->in = calloc(1, sizeof *j->in)) || !(j->in[0].ids = malloc((text.len + 1) * sizeof(int))))) {
        api_error_set(e, 500, NULL, "out of memory");
        rc = -1;
    }
    if (rc == 0) {
        j->n_in = 1;
        j->in[0].n = (int)tok_encode(text.p, text.len, j->in[0].ids); /* BOS, then the bytes */
    }
    buf_free(&text);
    g->writer = &CHAT_WRITER;
    snprintf(g->id, sizeof g->id, "chatcmpl-%s", request_id ? request_id : "0");
    g->created = (long long)time(NULL);
    if (rc == 0)
        rc = gen_parse_common(j, o, seed, mct, e);
    /* The template's stop strings end a reply where the next turn would begin. */
    for (int i = 0; rc == 0 && i < t->n_stop && gp->n_stop < API_MAX_STOP; i++)
        if (!(gp->stop[gp->n_stop++] = strdup(t->stop[i]))) {
            api_error_set(e, 500, NULL, "out of memory");
            rc = -1;
        }
    api_chat_template_free(made);
    return rc;
}

/* ---- the chat answer shapes ---------------------------------------------------- */

/* {"token", "logprob", "bytes"} of a token, left open. */
static void chat_token(jw *w, int id, float lp)
{
    char s[16];
    openai_token_str(id, s);
    jw_obj(w);
    jw_kstr(w, "token", s);
    jw_kfloat(w, "logprob", lp);
    jw_karr(w, "bytes");
    if (id >= 0 && id < 256)
        jw_int(w, id);
    jw_arr_end(w);
}

/* Generated tokens [i0, i1) of choice ch as logprobs "content" entries. */
static void chat_logprobs(jw *w, const api_job *j, const gen_choice *ch, int i0, int i1)
{
    const int k = gs(j)->gp.top;
    jw_obj(w);
    jw_karr(w, "content");
    for (int i = i0; i < i1; i++) {
        chat_token(w, ch->ids[i], ch->lp[i]);
        jw_karr(w, "top_logprobs");
        for (int a = 0; a < k; a++) {
            chat_token(w, ch->top_ids[(size_t)i * k + a], ch->top_lp[(size_t)i * k + a]);
            jw_obj_end(w);
        }
        jw_arr_end(w);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_knull(w, "refusal");
    jw_obj_end(w);
}

static void head(jw *w, const api_job *j, const char *object)
{
    jw_obj(w);
    jw_kstr(w, "id", gs(j)->id);
    jw_kstr(w, "object", object);
    jw_kint(w, "created", gs(j)->created);
    jw_kstr(w, "model", j->am->name);
    jw_karr(w, "choices");
}

/* One chunk with one choice's delta: a role, content bytes, logprobs of
 * tokens [i0, i1), a finish reason (each optional), and timings. */
static void chunk(api_job *j, int k, const char *role, const unsigned char *text, size_t len, int i0, int i1,
                  const char *finish, bool timings)
{
    jw w;
    sse_begin(j, &w);
    head(&w, j, "chat.completion.chunk");
    jw_obj(&w);
    jw_kint(&w, "index", k);
    jw_kobj(&w, "delta");
    if (role)
        jw_kstr(&w, "role", role);
    if (text) {
        jw_key(&w, "content");
        jw_bytes(&w, text, len);
    }
    jw_obj_end(&w);
    jw_key(&w, "logprobs");
    if (i1 > i0 && gs(j)->gp.logprobs)
        chat_logprobs(&w, j, &gs(j)->ch[k], i0, i1);
    else
        jw_null(&w);
    openai_chunk_end(j, &w, finish, timings);
}

/* The role comes first, in a chunk of its own per choice. */
static int chat_prologue(api_job *j, api_worker *w)
{
    (void)w;
    for (int k = 0; k < gs(j)->n_ch; k++)
        chunk(j, k, "assistant", (const unsigned char *)"", 0, 0, 0, NULL, false);
    return 0;
}

static void chat_token_event(api_job *j, int k, int i, const unsigned char *text, size_t len)
{
    if (len == 0 && !gs(j)->gp.logprobs) /* bytes held back: nothing to say yet */
        return;
    chunk(j, k, NULL, text, len, i, i + 1, NULL, false);
}

static void chat_choice_end(api_job *j, int k, const unsigned char *rest, size_t len)
{
    if (len)
        chunk(j, k, NULL, rest, len, 0, 0, NULL, false);
    chunk(j, k, NULL, NULL, 0, 0, 0, gs(j)->ch[k].finish, true);
}

static void chat_stream_end(api_job *j)
{
    if (!gs(j)->gp.include_usage)
        return;
    jw w;
    sse_begin(j, &w);
    head(&w, j, "chat.completion.chunk");
    openai_answer_end(j, &w); /* no choices: the usage and timings */
    sse_end(j);
}

static int chat_answer(api_job *j, api_worker *wk)
{
    (void)wk;
    jw w;
    jw_init(&w, &j->out);
    head(&w, j, "chat.completion");
    for (int k = 0; k < gs(j)->n_ch; k++) {
        const gen_choice *ch = &gs(j)->ch[k];
        jw_obj(&w);
        jw_kint(&w, "index", k);
        jw_kobj(&w, "message");
        jw_kstr(&w, "role", "assistant");
        jw_key(&w, "content");
        jw_bytes(&w, ch->out, (size_t)ch->keep);
        jw_knull(&w, "refusal");
        jw_obj_end(&w);
        jw_key(&w, "logprobs");
        if (gs(j)->gp.logprobs)
            chat_logprobs(&w, j, ch, 0, ch->keep);
        else
            jw_null(&w);
        jw_kstr(&w, "finish_reason", ch->finish);
        jw_obj_end(&w);
    }
    openai_answer_end(j, &w);
    return 0;
}

const gen_writer CHAT_WRITER = {.prologue = chat_prologue, .token = chat_token_event, .choice_end = chat_choice_end,
                                .stream_end = chat_stream_end, .answer = chat_answer};

static const char *const CHAT_FIELDS[] = {
    "model", "session", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stop",
    "seed", "stream", "stream_options", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "penalty_last_n", "logit_bias", "logprobs", "top_logprobs", "user", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "modalities", "store", "metadata", NULL};

const job_ops CHAT_JOB = {.fields = CHAT_FIELDS, .op = METRICS_OP_CHAT, .parse = chat_parse, GENERATION_RUN};

/* ---- POST /v1/chat/render --------------------------------------------------------- */

int inline_chat_render(const inline_req *q, api_reply *r)
{
    api_error e;
    cJSON *o = json_parse_object(q->body, q->len, &e);
    static const char *const fields[] = {"model", "messages", NULL};
    api_chat_template *made = NULL;
    const api_chat_template *t = NULL;
    buf text = {0}, b = {0};
    int rc = -1;
    if (!o || json_check_fields(o, fields, q->route, &e) < 0)
        goto refuse;
    api_model *am = json_get_model(q->ctx, o, &e);
    if (!am)
        goto refuse;
    api_model_release(am);
    if (!(t = template_of(q->ctx, &made))) {
        api_error_set(&e, 500, NULL, "out of memory");
        goto refuse;
    }
    if (render(t, o, &text, &e) < 0)
        goto refuse;
    jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_key(&w, "prompt");
    jw_bytes(&w, (const unsigned char *)text.p, text.len);
    jw_karr(&w, "stop");
    for (int i = 0; i < t->n_stop; i++)
        jw_str(&w, t->stop[i]);
    jw_arr_end(&w);
    jw_kint(&w, "prompt_tokens", (long long)text.len);
    jw_obj_end(&w);
    rc = json_reply(&b, 200, r);
    goto done;
refuse:
    rc = api_error_reply(&e, r);
done:
    cJSON_Delete(o);
    buf_free(&text);
    api_chat_template_free(made);
    return rc;
}
