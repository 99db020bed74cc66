/* openai.c -- the OpenAI text_completion shapes of /v1/completions: the whole
 * answer, stream chunks, and logprobs as OpenAI's legacy completions API
 * gives them (tokens, token_logprobs, top_logprobs, text_offset).
 *
 * Tokens are bytes here; OpenAI renders a token as its text, so a byte that
 * is not ASCII is rendered "bytes:\\xNN", as OpenAI does for partial characters.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gen_state *gs(const api_job *j) { return j->state; }

void openai_token_str(int id, char out[16])
{
    if (id == TOK_BOS || id < 0 || id > 255)
        snprintf(out, 16, "<|bos|>");
    else if (id > 0 && id < 0x80)
        snprintf(out, 16, "%c", id);
    else
        snprintf(out, 16, "bytes:\\x%02x", id);
}

/* The tokens of one logprobs object: prompt tokens [p0, p1) (indices into the
 * ids of ch's prompt, scored by its lp), then generated tokens [g0, g1) of ch,
 * whose offsets start at gen_offset. */
typedef struct lp_span {
    const gen_choice *ch;
    int p0, p1, g0, g1;
    size_t gen_offset;
} lp_span;

/* Token n of a span: id, log-probability, alternatives (ids and lps, k of
 * them; idx is scratch for a prompt token's) and text offset. */
static void span_token(const api_job *j, const lp_span *s, int n, int *idx, int *id, float *lp, const int **top_ids,
                       float *top_lp, size_t *offset)
{
    const int k = gs(j)->gp.top, V = model_get_config(j->m)->vocab, np = s->p1 - s->p0;
    if (n < np) {
        const job_input *in = &j->in[s->ch->prompt];
        int t = s->p0 + n;
        const float *row = in->lp + (size_t)(t - 1) * V;
        *id = in->ids[t];
        *lp = row[*id];
        *offset = (size_t)t - 1;
        if (top_ids) {
            api_topk(row, V, k, idx);
            for (int a = 0; a < k; a++)
                top_lp[a] = row[idx[a]];
            *top_ids = idx;
        }
        return;
    }
    int i = s->g0 + n - np;
    *id = s->ch->ids[i];
    *lp = s->ch->lp[i];
    *offset = s->gen_offset + (size_t)i;
    if (top_ids && k > 0) { /* with no alternatives asked for, there are no arrays to read */
        memcpy(top_lp, s->ch->top_lp + (size_t)i * k, (size_t)k * sizeof *top_lp);
        *top_ids = s->ch->top_ids + (size_t)i * k;
    }
}

/* {"tokens", "token_logprobs", "top_logprobs", "text_offset"} of a span, column by column. */
static void write_logprobs(jw *w, const api_job *j, api_worker *wk, const lp_span *s)
{
    const int n = (s->p1 - s->p0) + (s->g1 - s->g0), k = gs(j)->gp.top;
    int id;
    float lp, top_lp[OPENAI_MAX_LOGPROBS];
    const int *top_ids = NULL;
    size_t offset;
    char str[16];
    jw_obj(w);
    jw_karr(w, "tokens");
    for (int t = 0; t < n; t++) {
        span_token(j, s, t, NULL, &id, &lp, NULL, NULL, &offset);
        openai_token_str(id, str);
        jw_str(w, str);
    }
    jw_arr_end(w);
    jw_karr(w, "token_logprobs");
    for (int t = 0; t < n; t++) {
        span_token(j, s, t, NULL, &id, &lp, NULL, NULL, &offset);
        jw_float(w, lp);
    }
    jw_arr_end(w);
    jw_karr(w, "top_logprobs");
    for (int t = 0; t < n; t++) {
        span_token(j, s, t, wk ? wk->idx : NULL, &id, &lp, &top_ids, top_lp, &offset);
        jw_obj(w);
        bool chosen_listed = false;
        for (int a = 0; a < k; a++) {
            openai_token_str(top_ids[a], str);
            jw_kfloat(w, str, top_lp[a]);
            chosen_listed |= top_ids[a] == id;
        }
        if (!chosen_listed) { /* OpenAI lists the chosen token too */
            openai_token_str(id, str);
            jw_kfloat(w, str, lp);
        }
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_karr(w, "text_offset");
    for (int t = 0; t < n; t++) {
        span_token(j, s, t, NULL, &id, &lp, NULL, NULL, &offset);
        jw_int(w, (long long)offset);
    }
    jw_arr_end(w);
    jw_obj_end(w);
}

void openai_answer_end(api_job *j, jw *w)
{
    jw_arr_end(w);
    json_usage(w, api_job_input_tokens(j), j->output_tokens, true);
    json_timings(w, j);
    jw_obj_end(w);
}

void openai_chunk_end(api_job *j, jw *w, const char *finish, bool timings)
{
    jw_key(w, "finish_reason");
    if (finish)
        jw_str(w, finish);
    else
        jw_null(w);
    jw_obj_end(w);
    jw_arr_end(w);
    if (timings)
        json_timings(w, j);
    jw_obj_end(w);
    sse_end(j);
}

/* {"id", "object", "created", "model", "choices": [ -- left open. */
static void head(jw *w, const api_job *j)
{
    jw_obj(w);
    jw_kstr(w, "id", gs(j)->id);
    jw_kstr(w, "object", "text_completion");
    jw_kint(w, "created", gs(j)->created);
    jw_kstr(w, "model", j->am->name);
    jw_karr(w, "choices");
}

/* One stream chunk with one choice: text bytes, logprobs of span s (or null) and finish. */
static void chunk(api_job *j, api_worker *wk, int index, const unsigned char *text, size_t len, const lp_span *s,
                  const char *finish, bool timings)
{
    jw w;
    sse_begin(j, &w);
    head(&w, j);
    jw_obj(&w);
    jw_key(&w, "text");
    jw_bytes(&w, text, len);
    jw_kint(&w, "index", index);
    jw_key(&w, "logprobs");
    if (s)
        write_logprobs(&w, j, wk, s);
    else
        jw_null(&w);
    openai_chunk_end(j, &w, finish, timings);
}

/* The prompt's bytes followed by choice ch's kept output, as one string
 * repaired once, so a character split across the two is not mangled.
 * -1 on out of memory. */
static int text_with_prompt(jw *w, const api_job *j, const gen_choice *ch)
{
    const job_input *in = &j->in[ch->prompt];
    size_t pl = (size_t)in->n - 1, total = pl + (size_t)ch->keep;
    unsigned char *all = malloc(total + 1);
    if (!all)
        return -1;
    for (size_t i = 0; i < pl; i++)
        all[i] = (unsigned char)in->ids[i + 1];
    if (ch->keep)
        memcpy(all + pl, ch->out, (size_t)ch->keep);
    jw_bytes(w, all, total);
    free(all);
    return 0;
}

static int openai_answer(api_job *j, api_worker *wk)
{
    jw w;
    jw_init(&w, &j->out);
    head(&w, j);
    for (int k = 0; k < gs(j)->n_ch; k++) {
        const gen_choice *ch = &gs(j)->ch[k];
        const int P = j->in[ch->prompt].n - 1;
        jw_obj(&w);
        jw_key(&w, "text");
        if (!gs(j)->gp.echo)
            jw_bytes(&w, ch->out, (size_t)ch->keep);
        else if (text_with_prompt(&w, j, ch) < 0)
            return -1;
        jw_kint(&w, "index", k);
        jw_key(&w, "logprobs");
        if (gs(j)->gp.logprobs) {
            lp_span s = {ch, 1, gs(j)->gp.echo ? P + 1 : 1, 0, ch->keep, gs(j)->gp.echo ? (size_t)P : 0};
            write_logprobs(&w, j, wk, &s);
        } else {
            jw_null(&w);
        }
        jw_kstr(&w, "finish_reason", ch->finish);
        jw_obj_end(&w);
    }
    openai_answer_end(j, &w);
    return 0;
}

static void openai_stream_token(api_job *j, int k, int i, const unsigned char *text, size_t len)
{
    lp_span s = {&gs(j)->ch[k], 0, 0, i, i + 1, gs(j)->gp.echo ? (size_t)j->in[gs(j)->ch[k].prompt].n - 1 : 0};
    chunk(j, NULL, k, text, len, gs(j)->gp.logprobs ? &s : NULL, NULL, false);
}

static void openai_stream_end(api_job *j, int k, const unsigned char *rest, size_t len)
{
    chunk(j, NULL, k, rest, len, NULL, gs(j)->ch[k].finish, true);
}

static void openai_stream_usage(api_job *j)
{
    /* OpenAI's stream_options.include_usage: a last chunk with no choices. */
    if (!gs(j)->gp.include_usage)
        return;
    jw w;
    sse_begin(j, &w);
    head(&w, j);
    openai_answer_end(j, &w); /* no choices: the usage and timings */
    sse_end(j);
}

/* The echoed prompts, first in a stream. */
static int openai_stream_echo(api_job *j, api_worker *wk)
{
    if (!gs(j)->gp.echo)
        return 0;
    for (int k = 0; k < gs(j)->n_ch; k++) {
        const job_input *in = &j->in[gs(j)->ch[k].prompt];
        const int P = in->n - 1;
        unsigned char *prompt = malloc((size_t)P + 1);
        if (!prompt)
            return -1;
        for (int t = 0; t < P; t++)
            prompt[t] = (unsigned char)in->ids[t + 1];
        lp_span s = {&gs(j)->ch[k], 1, P + 1, 0, 0, 0};
        chunk(j, wk, k, prompt, (size_t)P, gs(j)->gp.logprobs ? &s : NULL, NULL, false);
        free(prompt);
    }
    return 0;
}

const gen_writer OPENAI_WRITER = {.prologue = openai_stream_echo, .token = openai_stream_token,
                                  .choice_end = openai_stream_end, .stream_end = openai_stream_usage,
                                  .answer = openai_answer};
