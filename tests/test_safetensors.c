/* test_safetensors.c -- the loader accepts good files and refuses every kind of
 * broken one with a message naming the problem.
 *
 * Broken files are derived from a good fixture by a small builder that keeps
 * tensor entries, data and metadata editable and writes them back out.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "safetensors.h"
#include "sha256.h"
#include "testutil.h"

#include "check_main.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASE_FIXTURE "gru_multihead.safetensors" /* H = 12, E = 8, 2 layers, 3 heads */

typedef struct entry {
    char name[96];
    char dtype[16];
    int ndim;
    uint64_t shape[4];
    uint64_t begin, end;
} entry;

/* An editable safetensors file. */
typedef struct builder {
    entry e[64];
    int n;
    char key[32][64], val[32][128];
    int nmeta;
    unsigned char *data;
    size_t data_len;
    bool unpadded;          /* leave 8 + N unaligned */
    const char *raw_meta;   /* written verbatim as the "__metadata__" value */
    const char *raw_header; /* written verbatim as the whole header */
} builder;

static char tmpdir[] = "/tmp/attnlm-st-XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
    strcpy(tmpdir, "/tmp/attnlm-st-XXXXXX");
}

static void build_from_fixture(builder *b)
{
    char path[512], err[ATTNLM_ERR_LEN];
    memset(b, 0, sizeof *b);
    st_file *f = st_open(fixture_path(path, sizeof path, BASE_FIXTURE), err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    for (int i = 0; i < st_tensor_count(f); i++) {
        const st_tensor *t = st_tensor_at(f, i);
        entry *e = &b->e[b->n++];
        snprintf(e->name, sizeof e->name, "%s", t->name);
        strcpy(e->dtype, "F32");
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, sizeof e->shape);
        e->begin = t->begin;
        e->end = t->end;
        if (t->end > b->data_len)
            b->data_len = t->end;
    }
    b->data = malloc(b->data_len + 4096); /* room for added tensors */
    for (int i = 0; i < st_tensor_count(f); i++) {
        const st_tensor *t = st_tensor_at(f, i);
        memcpy(b->data + t->begin, t->data, t->end - t->begin);
    }
    for (int i = 0; i < st_meta_count(f); i++) {
        snprintf(b->key[i], sizeof b->key[i], "%s", st_meta_at(f, i)->key);
        snprintf(b->val[i], sizeof b->val[i], "%s", st_meta_at(f, i)->value);
        b->nmeta++;
    }
    st_close(f);
}

static entry *find(builder *b, const char *name)
{
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->e[i].name, name) == 0)
            return &b->e[i];
    ck_abort_msg("no tensor %s in the fixture", name);
    return NULL;
}

static void meta_set(builder *b, const char *key, const char *val)
{
    for (int i = 0; i < b->nmeta; i++)
        if (strcmp(b->key[i], key) == 0) {
            snprintf(b->val[i], sizeof b->val[i], "%s", val);
            return;
        }
    snprintf(b->key[b->nmeta], sizeof b->key[0], "%s", key);
    snprintf(b->val[b->nmeta++], sizeof b->val[0], "%s", val);
}

static void meta_del(builder *b, const char *key)
{
    for (int i = 0; i < b->nmeta; i++)
        if (strcmp(b->key[i], key) == 0) {
            memmove(&b->key[i], &b->key[i + 1], (size_t)(b->nmeta - i - 1) * sizeof b->key[0]);
            memmove(&b->val[i], &b->val[i + 1], (size_t)(b->nmeta - i - 1) * sizeof b->val[0]);
            b->nmeta--;
            return;
        }
}

/* Inserts `bytes` zero bytes into the data at offset `at`, moving later tensors along. */
static void insert_bytes(builder *b, uint64_t at, size_t bytes)
{
    memmove(b->data + at + bytes, b->data + at, b->data_len - at);
    memset(b->data + at, 0, bytes);
    b->data_len += bytes;
    for (int i = 0; i < b->n; i++)
        if (b->e[i].begin >= at) {
            b->e[i].begin += bytes;
            b->e[i].end += bytes;
        }
}

/* Removes a tensor and its bytes. */
static void drop_tensor(builder *b, const char *name)
{
    entry *e = find(b, name);
    uint64_t at = e->begin, len = e->end - e->begin;
    memmove(b->data + at, b->data + at + len, b->data_len - at - len);
    b->data_len -= len;
    *e = b->e[--b->n];
    for (int i = 0; i < b->n; i++)
        if (b->e[i].begin > at) {
            b->e[i].begin -= len;
            b->e[i].end -= len;
        }
}

/* Appends a 1-D tensor of n values (n <= 16). */
static void add_tensor(builder *b, const char *name, int n, float value)
{
    entry *e = &b->e[b->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    strcpy(e->dtype, "F32");
    e->ndim = 1;
    e->shape[0] = (uint64_t)n;
    e->begin = b->data_len;
    e->end = b->data_len + 4 * (uint64_t)n;
    for (int i = 0; i < n; i++)
        memcpy(b->data + b->data_len + 4 * (size_t)i, &value, 4);
    b->data_len += 4 * (size_t)n;
}

static void write_file(const builder *b, const char *path)
{
    static char h[16384];
    size_t n = 0;
    if (b->raw_header) {
        n = (size_t)snprintf(h, sizeof h, "%s", b->raw_header);
    } else {
        n += (size_t)snprintf(h + n, sizeof h - n, "{\"__metadata__\":");
        if (b->raw_meta) {
            n += (size_t)snprintf(h + n, sizeof h - n, "%s", b->raw_meta);
        } else {
            n += (size_t)snprintf(h + n, sizeof h - n, "{");
            for (int i = 0; i < b->nmeta; i++)
                n += (size_t)snprintf(h + n, sizeof h - n, "%s\"%s\":\"%s\"", i ? "," : "", b->key[i], b->val[i]);
            n += (size_t)snprintf(h + n, sizeof h - n, "}");
        }
        for (int i = 0; i < b->n; i++) {
            const entry *e = &b->e[i];
            n += (size_t)snprintf(h + n, sizeof h - n, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e->name, e->dtype);
            for (int d = 0; d < e->ndim; d++)
                n += (size_t)snprintf(h + n, sizeof h - n, "%s%llu", d ? "," : "", (unsigned long long)e->shape[d]);
            n += (size_t)snprintf(h + n, sizeof h - n, "],\"data_offsets\":[%llu,%llu]}",
                                  (unsigned long long)e->begin, (unsigned long long)e->end);
        }
        n += (size_t)snprintf(h + n, sizeof h - n, "}");
        if (b->unpadded) {
            if ((8 + n) % 4 == 0)
                h[n++] = ' ';
        } else {
            while ((8 + n) % 8)
                h[n++] = ' ';
        }
    }
    ck_assert_uint_lt(n, sizeof h);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(h, 1, n, f);
    fwrite(b->data, 1, b->data_len, f);
    fclose(f);
}

/* Writes the builder out and loads it; returns the model (or NULL with err). */
static model *write_and_load(const builder *b, char *err, size_t errlen)
{
    char path[128];
    snprintf(path, sizeof path, "%s/m.safetensors", tmpdir);
    write_file(b, path);
    return model_load(path, err, errlen);
}

/* ---- broken files: one mutation each, and the words the message must contain ---- */

static void m_dtype(builder *b) { strcpy(find(b, "out.bias")->dtype, "F16"); }
static void m_size_mismatch(builder *b) { find(b, "out.bias")->shape[0] = 256; }
static void m_past_end(builder *b)
{
    entry *e = &b->e[0];
    for (int i = 1; i < b->n; i++) /* the last tensor in the data */
        if (b->e[i].end > e->end)
            e = &b->e[i];
    e->begin += 8;
    e->end += 8;
}
static void m_overlap(builder *b)
{
    entry *src = find(b, "attn.out_proj.bias"), *dst = find(b, "combine.bias");
    dst->begin = src->begin;
    dst->end = src->end;
}
static void m_gap(builder *b) { insert_bytes(b, find(b, "embed.weight")->begin, 4); }
static void m_trailing(builder *b) { b->data_len += 4; }
static void m_dup_tensor(builder *b) { add_tensor(b, "out.bias", 257, 0.0f); }
static void m_missing(builder *b) { drop_tensor(b, "attn.in_proj_bias"); }
static void m_extra(builder *b) { add_tensor(b, "attn.extra", 2, 1.0f); }
static void m_misshapen(builder *b)
{
    entry *e = find(b, "embed.weight");
    e->shape[0] = 8;
    e->shape[1] = 257;
}
static void m_ndim(builder *b)
{
    entry *e = find(b, "out.bias");
    e->ndim = 2;
    e->shape[0] = 1;
    e->shape[1] = 257;
}
static void poke(builder *b, const char *name, int idx, float v)
{
    memcpy(b->data + find(b, name)->begin + 4 * (size_t)idx, &v, 4);
}
static void m_nan(builder *b) { poke(b, "rnn.weight_hh_l1", 5, NAN); }
static void m_inf(builder *b) { poke(b, "out.weight", 100, -INFINITY); }
static void m_no_meta(builder *b) { b->nmeta = 0; }
static void m_format(builder *b) { meta_set(b, "format", "gguf"); }
static void m_version(builder *b) { meta_set(b, "format_version", "3"); }
static void m_kv_missing(builder *b) { meta_set(b, "format_version", "2"); }
static void m_kv_in_v1(builder *b) { meta_set(b, "attn_kv", "state"); }
static void m_kv_unknown(builder *b)
{
    meta_set(b, "format_version", "2");
    meta_set(b, "attn_kv", "shifted");
}
/* The state form's tensors under the continuation setting (multihead's differ). */
static void m_kv_tensors(builder *b)
{
    meta_set(b, "format_version", "2");
    meta_set(b, "attn_kv", "continuation");
}
static void m_hidden_text(builder *b) { meta_set(b, "hidden", "12x"); }
static void m_hidden_zero(builder *b) { meta_set(b, "hidden", "0"); }
static void m_hidden_neg(builder *b) { meta_set(b, "hidden", "-12"); }
static void m_hidden_wrong(builder *b) { meta_set(b, "hidden", "15"); }
static void m_layers_wrong(builder *b) { meta_set(b, "layers", "1"); }
static void m_layers_more(builder *b) { meta_set(b, "layers", "3"); }
static void m_cell(builder *b) { meta_set(b, "cell", "transformer"); }
static void m_cell_lstm(builder *b) { meta_set(b, "cell", "lstm"); }
static void m_attention_missing(builder *b) { meta_del(b, "attention"); }
static void m_attention_dot(builder *b) { meta_set(b, "attention", "dot"); }
static void m_heads(builder *b) { meta_set(b, "heads", "5"); }
static void m_heads_missing(builder *b) { meta_del(b, "heads"); }
static void m_vocab(builder *b) { meta_set(b, "vocab_size", "300"); }
static void m_tokenizer(builder *b) { meta_set(b, "tokenizer", "bpe"); }
static void m_bos(builder *b) { meta_set(b, "bos_id", "255"); }
static void m_window_huge(builder *b) { meta_set(b, "window", "99999999999"); }
static void m_meta_not_string(builder *b) { b->raw_meta = "{\"format\":\"attnlm\",\"hidden\":12}"; }
static void m_meta_dup(builder *b) { b->raw_meta = "{\"format\":\"attnlm\",\"format\":\"attnlm\"}"; }
static void m_not_json(builder *b) { b->raw_header = "this is not json"; }
static void m_truncated_json(builder *b) { b->raw_header = "{\"embed.weight\":{\"dtype\":"; }
static void m_float_offset(builder *b) { b->raw_header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}"; }
static void m_neg_shape(builder *b) { b->raw_header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}"; }
static void m_unknown_field(builder *b) { b->raw_header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}"; }
static void m_header_garbage(builder *b) { b->raw_header = "{} trailing"; }
static void m_huge_offsets(builder *b) { find(b, "out.bias")->end = UINT64_MAX; }

static const struct {
    const char *what;
    void (*mutate)(builder *);
    const char *expect; /* substring of the message */
} BROKEN[] = {
    {"dtype other than F32 and BF16", m_dtype, "dtype F16 is not supported"},
    {"shape disagrees with offsets", m_size_mismatch, "\"out.bias\": data_offsets"},
    {"offsets outside the file", m_past_end, "run past the end of the file"},
    {"overlapping tensors", m_overlap, "overlaps"},
    {"gap between tensors", m_gap, "gap in the data buffer"},
    {"bytes after the last tensor", m_trailing, "after the last tensor"},
    {"duplicate tensor", m_dup_tensor, "\"out.bias\" appears twice"},
    {"missing tensor", m_missing, "missing tensor \"attn.in_proj_bias\""},
    {"extra tensor", m_extra, "unexpected tensor \"attn.extra\""},
    {"misshapen tensor", m_misshapen, "\"embed.weight\": shape [8, 257], expected [257, 8]"},
    {"tensor of wrong rank", m_ndim, "\"out.bias\": shape [1, 257], expected [257]"},
    {"NaN weight", m_nan, "\"rnn.weight_hh_l1\": non-finite value (nan) at element 5"},
    {"infinite weight", m_inf, "\"out.weight\": non-finite value (inf) at element 100"},
    {"no metadata", m_no_meta, "missing \"format\""},
    {"wrong format", m_format, "\"format\": \"gguf\""},
    {"unknown format version", m_version, "\"format_version\": \"3\" is not one of 1, 2"},
    {"version 2 without attn_kv", m_kv_missing, "missing \"attn_kv\""},
    {"attn_kv in a version 1 file", m_kv_in_v1, "\"attn_kv\": not part of format version 1"},
    {"unknown attn_kv", m_kv_unknown, "\"attn_kv\": \"shifted\" is not one of state, continuation"},
    {"attn_kv inconsistent with tensors", m_kv_tensors, "missing tensor \"attn.q_proj_weight\""},
    {"non-numeric hidden", m_hidden_text, "\"hidden\": \"12x\" is not a positive integer"},
    {"zero hidden", m_hidden_zero, "\"hidden\": \"0\" is not a positive integer"},
    {"negative hidden", m_hidden_neg, "\"hidden\": \"-12\" is not a positive integer"},
    {"hidden inconsistent with tensors", m_hidden_wrong, "\"rnn.weight_ih_l0\": shape [36, 8], expected [45, 8]"},
    {"fewer layers than tensors", m_layers_wrong, "unexpected tensor \"rnn."},
    {"more layers than tensors", m_layers_more, "missing tensor \"rnn.weight_ih_l2\""},
    {"unknown cell", m_cell, "\"cell\": \"transformer\" is not one of elman, gru, lstm"},
    {"cell inconsistent with tensors", m_cell_lstm, "\"rnn.weight_ih_l0\": shape [36, 8], expected [48, 8]"},
    {"attention missing", m_attention_missing, "missing \"attention\""},
    {"attention inconsistent with tensors", m_attention_dot, "unexpected tensor \"attn."},
    {"heads not dividing hidden", m_heads, "\"heads\": 5 does not divide hidden = 12"},
    {"heads missing", m_heads_missing, "missing \"heads\""},
    {"vocabulary not the byte tokenizer's", m_vocab, "\"vocab_size\": 300"},
    {"unknown tokenizer", m_tokenizer, "\"tokenizer\": \"bpe\""},
    {"wrong BOS id", m_bos, "\"bos_id\": 255"},
    {"absurd window", m_window_huge, "\"window\": 99999999999 exceeds the limit"},
    {"metadata value not a string", m_meta_not_string, "metadata \"hidden\": value is not a string"},
    {"duplicate metadata key", m_meta_dup, "metadata key \"format\" appears twice"},
    {"header not JSON", m_not_json, "header byte 0: expected '{'"},
    {"truncated header JSON", m_truncated_json, "header byte 25: expected a string"},
    {"fractional offset", m_float_offset, "found a fraction"},
    {"negative shape", m_neg_shape, "expected a non-negative integer"},
    {"unknown entry field", m_unknown_field, "unexpected or repeated field \"x\""},
    {"data after the header object", m_header_garbage, "unexpected data after the header object"},
    {"offsets overflowing", m_huge_offsets, "\"out.bias\": data_offsets"},
};
#define N_BROKEN ((int)(sizeof BROKEN / sizeof *BROKEN))

START_TEST(test_broken_file_is_refused)
{
    builder *b = malloc(sizeof *b);
    char err[ATTNLM_ERR_LEN] = "";
    build_from_fixture(b);
    BROKEN[_i].mutate(b);
    model *m = write_and_load(b, err, sizeof err);
    ck_assert_msg(m == NULL, "%s: loaded", BROKEN[_i].what);
    ck_assert_msg(strstr(err, BROKEN[_i].expect) != NULL, "%s: message \"%s\" lacks \"%s\"", BROKEN[_i].what, err,
                  BROKEN[_i].expect);
    free(b->data);
    free(b);
}
END_TEST

/* Asserts that two models give the very same log-probabilities on a short text. */
static void assert_same_numbers(const model *x, const model *y)
{
    char err[ATTNLM_ERR_LEN];
    int tok[9] = {256, 'W', 'h', 'a', 'l', 'e', 's', '!', '\n'};
    float a[9 * 257], c[9 * 257];
    ck_assert_int_eq(model_forward(x, tok, 9, a, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(model_forward(y, tok, 9, c, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(a, c, sizeof a), 0);
}

/* The rebuilt fixture loads and computes what the original does; so does an
 * unpadded header, and the same file as format version 2 with attn_kv state. */
START_TEST(test_good_file_loads)
{
    builder *b = malloc(sizeof *b);
    char err[ATTNLM_ERR_LEN], path[512];
    build_from_fixture(b);
    b->unpadded = _i == 1;
    if (b->unpadded)
        meta_set(b, "note", "makes the data buffer start off a 4-byte boundary");
    if (_i == 2) {
        meta_set(b, "format_version", "2");
        meta_set(b, "attn_kv", "state");
    }
    model *rebuilt = write_and_load(b, err, sizeof err);
    ck_assert_msg(rebuilt != NULL, "%s", err);
    model *orig = model_load(fixture_path(path, sizeof path, BASE_FIXTURE), err, sizeof err);
    ck_assert_ptr_nonnull(orig);
    assert_same_numbers(orig, rebuilt);
    model_free(orig);
    model_free(rebuilt);
    free(b->data);
    free(b);
}
END_TEST

/* Rounds every weight to bfloat16 (to nearest, ties to even), stored as BF16
 * or, with as_f32, as the F32 values it stands for. */
static void round_to_bf16(builder *b, bool as_f32)
{
    unsigned char *out = malloc(b->data_len);
    uint64_t pos = 0;
    for (int i = 0; i < b->n; i++) {
        entry *e = &b->e[i];
        uint64_t numel = (e->end - e->begin) / 4, begin = pos;
        for (uint64_t k = 0; k < numel; k++) {
            uint32_t u;
            memcpy(&u, b->data + e->begin + 4 * k, 4);
            uint16_t h = (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
            if (as_f32) {
                uint32_t w = (uint32_t)h << 16;
                memcpy(out + pos, &w, 4);
                pos += 4;
            } else {
                memcpy(out + pos, &h, 2);
                pos += 2;
            }
        }
        e->begin = begin;
        e->end = pos;
        if (!as_f32)
            strcpy(e->dtype, "BF16");
    }
    memcpy(b->data, out, pos);
    b->data_len = pos;
    free(out);
}

/* A BF16 file computes exactly what the F32 file of the same rounded weights
 * does, also when its header leaves the data off a 4-byte boundary. */
START_TEST(test_bf16_file_loads)
{
    builder *b = malloc(sizeof *b), *r = malloc(sizeof *r);
    char err[ATTNLM_ERR_LEN];
    build_from_fixture(b);
    build_from_fixture(r);
    round_to_bf16(b, false);
    round_to_bf16(r, true);
    b->unpadded = _i == 1;
    model *half = write_and_load(b, err, sizeof err);
    ck_assert_msg(half != NULL, "%s", err);
    model *full = write_and_load(r, err, sizeof err);
    ck_assert_msg(full != NULL, "%s", err);
    ck_assert_uint_eq(model_param_count(half), model_param_count(full));
    assert_same_numbers(half, full);
    model_free(half);
    model_free(full);
    free(b->data);
    free(r->data);
    free(b);
    free(r);
}
END_TEST

/* Whatever happens to the file after loading -- truncated, overwritten,
 * deleted -- the model computes the same numbers and reports the hash of the
 * bytes it loaded. */
START_TEST(test_file_changes_after_load)
{
    char err[ATTNLM_ERR_LEN], src[512], path[128], want[65];
    snprintf(path, sizeof path, "%s/live.safetensors", tmpdir);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "cp %s %s", fixture_path(src, sizeof src, BASE_FIXTURE), path);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(sha256_file(path, want, err, sizeof err), 0);
    model *m = model_load(path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_str_eq(model_sha256(m), want);
    int tok[9] = {256, 'W', 'h', 'a', 'l', 'e', 's', '!', '\n'};
    float a[9 * 257], c[9 * 257];
    ck_assert_int_eq(model_forward(m, tok, 9, a, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(truncate(path, 0), 0);
    ck_assert_int_eq(model_forward(m, tok, 9, c, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(a, c, sizeof a), 0);
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < 100000; i++)
        fputc(0xFF, f);
    fclose(f);
    ck_assert_int_eq(model_forward(m, tok, 9, c, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(a, c, sizeof a), 0);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(model_forward(m, tok, 9, c, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(a, c, sizeof a), 0);
    ck_assert_str_eq(model_sha256(m), want);
    model_free(m);
}
END_TEST

START_TEST(test_unreadable_files)
{
    char err[ATTNLM_ERR_LEN], path[128];
    ck_assert_ptr_null(model_load("/nonexistent/model.safetensors", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/model.safetensors: No such file"));
    ck_assert_ptr_null(model_load(tmpdir, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));

    snprintf(path, sizeof path, "%s/short", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite("\x10\0\0", 1, 3, f);
    fclose(f);
    ck_assert_ptr_null(model_load(path, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "too short"));

    f = fopen(path, "wb");
    fwrite("\xff\xff\0\0\0\0\0\0{}", 1, 10, f); /* claims a 65535-byte header */
    fclose(f);
    ck_assert_ptr_null(model_load(path, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "header length 65535 is larger than the file"));
}
END_TEST

START_TEST(test_reader_api)
{
    char err[ATTNLM_ERR_LEN], path[512];
    st_file *f = st_open(fixture_path(path, sizeof path, BASE_FIXTURE), err, sizeof err);
    ck_assert_ptr_nonnull(f);
    const st_tensor *t = st_find(f, "attn.in_proj_weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_uint_eq(t->shape[0], 36);
    ck_assert_uint_eq(t->numel, 36 * 12);
    ck_assert_uint_eq((uintptr_t)t->data % 4, 0);
    ck_assert_ptr_null(st_find(f, "nope"));
    ck_assert_str_eq(st_meta_get(f, "cell"), "gru");
    ck_assert_ptr_null(st_meta_get(f, "nope"));
    ck_assert_uint_gt(st_file_size(f), 1000);
    st_close(f);
    st_close(NULL);
}
END_TEST

int main(void)
{
    const check_case loader = {
        "loader",
        CHECK_TESTS(CHECK_LOOP(test_broken_file_is_refused, N_BROKEN), CHECK_LOOP(test_good_file_loads, 3),
                    CHECK_LOOP(test_bf16_file_loads, 2), CHECK_TEST(test_file_changes_after_load),
                    CHECK_TEST(test_unreadable_files), CHECK_TEST(test_reader_api)),
        .setup = setup,
        .teardown = teardown,
    };
    return check_main("safetensors", &loader, 1);
}
