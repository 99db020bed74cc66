/* openai.c -- the OpenAI text_completion shapes of /v1/completions: the whole
 * answer, stream chunks, and logprobs as OpenAI's legacy completions API
 * gives them (tokens, token_logprobs, top_logprobs, text_offset).
 *
 * Tokens are bytes here; OpenAI renders a token as its text, so a byte that
 * is not ASCII is rendered "bytes:\\xNN", as OpenAI does for partial characters.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The OpenAI rendering of a token: its character if ASCII, else "bytes:\xNN".
 * NUL is rendered as bytes too, as it cannot be a C string's character. */
static void openai_token_str(const api_ctx *ctx, int id, char out[16])
{
    if (id == model_get_config(ctx->m)->bos_id || id < 0 || id > 255)
        snprintf(out, 16, "<|bos|>");
    else if (id > 0 && id < 0x80)
        snprintf(out, 16, "%c", id);
    else
        snprintf(out, 16, "bytes:\\x%02x", id);
}

static cJSON *openai_top(const api_ctx *ctx, const int *ids, const float *lps, int k, int chosen, float chosen_lp)
{
    cJSON *d = cJSON_CreateObject();
    char s[16];
    for (int i = 0; i < k; i++) {
        openai_token_str(ctx, ids[i], s);
        cJSON_AddItemToObject(d, s, json_float(lps[i]));
    }
    openai_token_str(ctx, chosen, s);
    if (!cJSON_HasObjectItem(d, s))
        cJSON_AddItemToObject(d, s, json_float(chosen_lp));
    return d;
}

/* Appends prompt token t (1 <= t < n_ids) to an OpenAI logprobs object. */
static void openai_add_prompt_token(api_job *j, api_worker *w, cJSON *lpo, int t, size_t offset)
{
    const int V = model_get_config(j->ctx->m)->vocab, id = j->ids[t];
    const float *row = j->prompt_lp + (size_t)(t - 1) * V;
    char s[16];
    openai_token_str(j->ctx, id, s);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "tokens"), cJSON_CreateString(s));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "token_logprobs"), json_float(row[id]));
    int k = j->gp.top;
    api_topk(row, V, k, w->idx);
    float tl[OPENAI_MAX_LOGPROBS];
    for (int i = 0; i < k; i++)
        tl[i] = row[w->idx[i]];
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "top_logprobs"), openai_top(j->ctx, w->idx, tl, k, id, row[id]));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "text_offset"), cJSON_CreateNumber((double)offset));
}

static void openai_add_gen_token(api_job *j, const gen_choice *ch, cJSON *lpo, int i, size_t offset)
{
    char s[16];
    openai_token_str(j->ctx, ch->ids[i], s);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "tokens"), cJSON_CreateString(s));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "token_logprobs"), json_float(ch->lp[i]));
    int k = j->gp.top;
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "top_logprobs"),
                         openai_top(j->ctx, ch->top_ids + (size_t)i * k, ch->top_lp + (size_t)i * k, k, ch->ids[i],
                                    ch->lp[i]));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lpo, "text_offset"), cJSON_CreateNumber((double)offset));
}

static cJSON *openai_logprobs_new(void)
{
    cJSON *lpo = cJSON_CreateObject();
    cJSON_AddArrayToObject(lpo, "tokens");
    cJSON_AddArrayToObject(lpo, "token_logprobs");
    cJSON_AddArrayToObject(lpo, "top_logprobs");
    cJSON_AddArrayToObject(lpo, "text_offset");
    return lpo;
}

/* {"id", "object", "created", "model"} of every completion answer and chunk. */
static cJSON *openai_head(const api_job *j)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", j->id);
    cJSON_AddStringToObject(root, "object", "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)j->created);
    cJSON_AddStringToObject(root, "model", j->ctx->model_id);
    return root;
}

static cJSON *openai_chunk(const api_job *j, int index, cJSON *text, cJSON *logprobs, const char *finish)
{
    cJSON *root = openai_head(j);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToObject(c, "text", text);
    cJSON_AddNumberToObject(c, "index", index);
    cJSON_AddItemToObject(c, "logprobs", logprobs ? logprobs : cJSON_CreateNull());
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    return root;
}

/* Prompt bytes [0, P) followed by choice ch's kept output, as one string
 * repaired once, so a character split across the two is not mangled.  NULL
 * on out of memory. */
static cJSON *prompt_and_output(const api_job *j, const gen_choice *ch, bool with_prompt)
{
    size_t pl = with_prompt ? (size_t)j->n_ids - 1 : 0, total = pl + (size_t)ch->keep;
    unsigned char *all = malloc(total + 1);
    if (!all)
        return NULL;
    for (size_t i = 0; i < pl; i++)
        all[i] = (unsigned char)j->ids[i + 1];
    if (ch->keep)
        memcpy(all + pl, ch->out, (size_t)ch->keep);
    cJSON *text = json_bytes_string(all, total);
    free(all);
    return text;
}

cJSON *openai_answer(api_job *j, api_worker *w)
{
    cJSON *root = openai_head(j);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    const size_t P = (size_t)j->n_ids - 1;
    for (int k = 0; k < j->gp.n; k++) {
        const gen_choice *ch = &j->ch[k];
        cJSON *text = prompt_and_output(j, ch, j->gp.echo);
        if (!text) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToObject(c, "text", text);
        cJSON_AddNumberToObject(c, "index", k);
        if (j->gp.logprobs) {
            cJSON *lpo = openai_logprobs_new();
            size_t pl = j->gp.echo ? P : 0;
            for (size_t t = 1; t <= pl; t++)
                openai_add_prompt_token(j, w, lpo, (int)t, t - 1);
            for (int i = 0; i < ch->keep; i++)
                openai_add_gen_token(j, ch, lpo, i, pl + (size_t)i);
            cJSON_AddItemToObject(c, "logprobs", lpo);
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        cJSON_AddStringToObject(c, "finish_reason", ch->finish);
        cJSON_AddItemToArray(choices, c);
    }
    cJSON_AddItemToObject(root, "usage", json_usage((int)P, j->output_tokens, true));
    return root;
}

void openai_stream_token(api_job *j, int k, int i, cJSON *text)
{
    cJSON *lpo = NULL;
    if (j->gp.logprobs) {
        lpo = openai_logprobs_new();
        size_t base = j->gp.echo ? (size_t)j->n_ids - 1 : 0;
        openai_add_gen_token(j, &j->ch[k], lpo, i, base + (size_t)i);
    }
    json_event(&j->out, openai_chunk(j, k, text, lpo, NULL));
}

void openai_stream_end(api_job *j, int k, cJSON *rest)
{
    json_event(&j->out, openai_chunk(j, k, rest, NULL, j->ch[k].finish));
}

void openai_stream_usage(api_job *j)
{
    /* OpenAI's stream_options.include_usage: a last chunk with no choices. */
    cJSON *root = openai_head(j);
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", json_usage(j->n_ids - 1, j->output_tokens, true));
    json_event(&j->out, root);
}

int openai_stream_echo(api_job *j, api_worker *w)
{
    const int P = j->n_ids - 1;
    for (int k = 0; k < j->gp.n; k++) {
        cJSON *lpo = NULL;
        if (j->gp.logprobs) {
            lpo = openai_logprobs_new();
            for (int t = 1; t <= P; t++)
                openai_add_prompt_token(j, w, lpo, t, (size_t)t - 1);
        }
        gen_choice none = {0};
        cJSON *text = prompt_and_output(j, &none, true);
        if (!text) {
            cJSON_Delete(lpo);
            return -1;
        }
        json_event(&j->out, openai_chunk(j, k, text, lpo, NULL));
    }
    return 0;
}
