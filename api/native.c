/* native.c -- the answer of POST /v1/generate: token objects with their
 * log-probability, alternatives and attention rows, as one JSON answer or as
 * server-sent events (a token and the text it completes, then the end with
 * finish_reason and usage).
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

static const gen_state *gs(const api_job *j) { return j->state; }

/* The native token object of generated token i, with logprob, top and attention. */
static void gen_token(jw *w, const api_job *j, const gen_choice *ch, int i)
{
    const model_config *c = model_get_config(j->m);
    const gen_params *gp = &gs(j)->gp;
    json_token_open(w, ch->ids[i]);
    jw_kfloat(w, "logprob", ch->lp[i]);
    int k = gp->top;
    if (k > 0) {
        jw_karr(w, "top");
        for (int a = 0; a < k; a++)
            json_scored(w, ch->top_ids[(size_t)i * k + a], ch->top_lp[(size_t)i * k + a]);
        jw_arr_end(w);
    }
    if (gp->attention) {
        /* The query that predicted token i sits at position q; its keys are lo..q. */
        const int N = c->heads, W = c->window, q = j->in[ch->prompt].n - 1 + i, lo = q - W + 1 < 0 ? 0 : q - W + 1;
        jw_karr(w, "attention");
        for (int h = 0; h < N; h++) {
            const float *band = ch->attn + ((size_t)i * N + h) * W;
            jw_arr(w);
            for (int p = lo; p <= q; p++)
                jw_float(w, band[p - q + W - 1]);
            jw_arr_end(w);
        }
        jw_arr_end(w);
    }
    jw_obj_end(w);
}

static void native_token(api_job *j, int k, int i, const unsigned char *text, size_t len)
{
    jw w;
    sse_begin(j, &w);
    jw_obj(&w);
    jw_key(&w, "token");
    gen_token(&w, j, &gs(j)->ch[k], i);
    jw_key(&w, "text");
    jw_bytes(&w, text, len);
    jw_obj_end(&w);
    sse_end(j);
}

static void native_choice_end(api_job *j, int k, const unsigned char *rest, size_t len)
{
    const gen_choice *ch = &gs(j)->ch[k];
    jw w;
    sse_begin(j, &w);
    jw_obj(&w);
    jw_key(&w, "text");
    jw_bytes(&w, rest, len);
    jw_kstr(&w, "finish_reason", ch->finish);
    json_usage(&w, j->in[0].n - 1, ch->n_out, false);
    json_timings(&w, j);
    jw_obj_end(&w);
    sse_end(j);
}

static void native_stream_end(api_job *j) { (void)j; }

/* The whole answer of a non-streaming job. */
static int native_answer(api_job *j, api_worker *wk)
{
    (void)wk;
    const gen_choice *ch = &gs(j)->ch[0];
    jw w;
    jw_init(&w, &j->out);
    jw_obj(&w);
    jw_key(&w, "text");
    jw_bytes(&w, ch->out, (size_t)ch->keep);
    jw_karr(&w, "tokens");
    for (int i = 0; i < ch->keep; i++)
        gen_token(&w, j, ch, i);
    jw_arr_end(&w);
    jw_kstr(&w, "finish_reason", ch->finish);
    json_usage(&w, j->in[0].n - 1, ch->n_out, false);
    json_timings(&w, j);
    jw_obj_end(&w);
    return 0;
}

const gen_writer NATIVE_WRITER = {.token = native_token, .choice_end = native_choice_end,
                                  .stream_end = native_stream_end, .answer = native_answer};
