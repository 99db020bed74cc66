/* safetensors.c -- see safetensors.h.
 *
 * The header is parsed by a small recursive-descent reader that accepts exactly
 * the shape safetensors headers have (an object of tensor entries plus an
 * optional "__metadata__" object of strings), so that nothing in it goes
 * unchecked: integers are parsed exactly as unsigned 64-bit values, unknown
 * fields and duplicate names are refused.
 */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include "err.h"
#include "sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

struct st_file {
    unsigned char *bytes; /* the whole file, 64-byte aligned */
    size_t len;
    char sha256[65];
    float *arena;         /* F32 data of the tensors that cannot be used in place, or NULL */
    st_tensor *tensors;
    int n_tensors, cap_tensors;
    st_meta *meta;
    int n_meta, cap_meta;
};

/* Header parser state: p walks [start, end). */
typedef struct {
    const char *start, *p, *end;
    char *err;
    size_t errlen;
} parser;

static int fail_at(parser *ps, const char *what)
{
    err_set(ps->err, ps->errlen, "header byte %td: %s", ps->p - ps->start, what);
    return -1;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int expect(parser *ps, char c)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != c) {
        char msg[32];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return fail_at(ps, msg);
    }
    ps->p++;
    return 0;
}

/* Returns true and consumes c if it is the next non-space character. */
static bool accept(parser *ps, char c)
{
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return true;
    }
    return false;
}

static int hex4(parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4)
        return fail_at(ps, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail_at(ps, "bad \\u escape");
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a JSON string into a new NUL-terminated buffer (caller frees).
 * Strings containing NUL are refused: names and metadata are C strings here. */
static int parse_string(parser *ps, char **out)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"')
        return fail_at(ps, "expected a string");
    ps->p++;
    const char *q = ps->p;
    while (q < ps->end && *q != '"') /* escapes never grow the text, so this bounds it */
        q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end)
        return fail_at(ps, "unterminated string");
    char *s = malloc((size_t)(q - ps->p) + 1), *o = s;
    if (!s)
        return fail_at(ps, "out of memory");
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) {
            free(s);
            return fail_at(ps, "control character in string");
        }
        if (c != '\\') {
            *o++ = (char)c;
            ps->p++;
            continue;
        }
        ps->p++;
        char e = *ps->p++;
        unsigned cp;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(ps, &cp) < 0) { free(s); return -1; }
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    free(s);
                    return fail_at(ps, "unpaired surrogate in \\u escape");
                }
                ps->p += 2;
                if (hex4(ps, &lo) < 0) { free(s); return -1; }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    free(s);
                    return fail_at(ps, "unpaired surrogate in \\u escape");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                free(s);
                return fail_at(ps, "unpaired surrogate in \\u escape");
            }
            if (cp == 0) {
                free(s);
                return fail_at(ps, "NUL character in string");
            }
            o += put_utf8(o, cp);
            break;
        default:
            free(s);
            return fail_at(ps, "bad escape in string");
        }
    }
    ps->p++;
    *o = '\0';
    *out = s;
    return 0;
}

/* An unsigned decimal integer that fits in 64 bits; no sign, fraction or exponent. */
static int parse_u64(parser *ps, uint64_t *out)
{
    skip_ws(ps);
    const char *b = ps->p;
    uint64_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        unsigned d = (unsigned)(*ps->p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return fail_at(ps, "integer too large");
        v = v * 10 + d;
        ps->p++;
    }
    if (ps->p == b)
        return fail_at(ps, "expected a non-negative integer");
    if (ps->p - b > 1 && *b == '0')
        return fail_at(ps, "integer with a leading zero");
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return fail_at(ps, "expected an integer, found a fraction");
    *out = v;
    return 0;
}

/* [u64, ...] with at most max elements; *n receives the count. */
static int parse_u64_array(parser *ps, uint64_t *vals, int max, int *n)
{
    *n = 0;
    if (expect(ps, '[') < 0)
        return -1;
    if (accept(ps, ']'))
        return 0;
    do {
        if (*n == max)
            return fail_at(ps, "array too long");
        if (parse_u64(ps, &vals[(*n)++]) < 0)
            return -1;
    } while (accept(ps, ','));
    return expect(ps, ']');
}

static int add_meta(st_file *f, parser *ps, char *key, char *value)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) {
            err_set(ps->err, ps->errlen, "metadata key \"%s\" appears twice", key);
            return -1;
        }
    if (f->n_meta == f->cap_meta) {
        int cap = f->cap_meta ? 2 * f->cap_meta : 16;
        st_meta *m = realloc(f->meta, (size_t)cap * sizeof *m);
        if (!m)
            return fail_at(ps, "out of memory");
        f->meta = m;
        f->cap_meta = cap;
    }
    f->meta[f->n_meta].key = key;
    f->meta[f->n_meta].value = value;
    f->n_meta++;
    return 0;
}

/* A member of an object: called with the parser at its value, it takes the
 * key (keeps or frees it).  Returns 0, or -1 with a message. */
typedef int (*member_fn)(parser *ps, char *key, void *ctx);

/* The one loop over a JSON object's members: '{', then "key": value pairs
 * separated by commas, each value read by member, then '}'. */
static int parse_object(parser *ps, member_fn member, void *ctx)
{
    if (expect(ps, '{') < 0)
        return -1;
    if (accept(ps, '}'))
        return 0;
    do {
        char *key = NULL;
        if (parse_string(ps, &key) < 0)
            return -1;
        if (expect(ps, ':') < 0) {
            free(key);
            return -1;
        }
        if (member(ps, key, ctx) < 0)
            return -1;
    } while (accept(ps, ','));
    return expect(ps, '}');
}

/* A metadata entry: its value must be a string. */
static int meta_member(parser *ps, char *key, void *ctx)
{
    char *value = NULL;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') {
        err_set(ps->err, ps->errlen, "metadata \"%s\": value is not a string", key);
        free(key);
        return -1;
    }
    if (parse_string(ps, &value) < 0 || add_meta(ctx, ps, key, value) < 0) {
        free(key);
        free(value);
        return -1;
    }
    return 0;
}

static st_tensor *new_tensor(st_file *f, parser *ps)
{
    if (f->n_tensors == ST_MAX_ENTRIES) {
        fail_at(ps, "too many tensors");
        return NULL;
    }
    if (f->n_tensors == f->cap_tensors) {
        int cap = f->cap_tensors ? 2 * f->cap_tensors : 32;
        st_tensor *t = realloc(f->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            fail_at(ps, "out of memory");
            return NULL;
        }
        f->tensors = t;
        f->cap_tensors = cap;
    }
    st_tensor *t = &f->tensors[f->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

/* What a tensor entry has given so far. */
typedef struct entry_state {
    st_tensor *t;
    bool have_dtype, have_shape, have_offsets;
} entry_state;

/* One field of a tensor entry: dtype, shape or data_offsets, each once. */
static int entry_member(parser *ps, char *field, void *ctx)
{
    entry_state *es = ctx;
    st_tensor *t = es->t;
    const char *name = t->name;
    int rc = 0;
    if (strcmp(field, "dtype") == 0 && !es->have_dtype) {
        char *dtype = NULL;
        rc = parse_string(ps, &dtype);
        if (rc == 0 && strcmp(dtype, "F32") == 0) {
            t->dtype = ST_F32;
        } else if (rc == 0 && strcmp(dtype, "BF16") == 0) {
            t->dtype = ST_BF16;
        } else if (rc == 0) {
            err_set(ps->err, ps->errlen, "tensor \"%s\": dtype %s is not supported (only F32 and BF16)", name,
                    dtype);
            rc = -1;
        }
        free(dtype);
        es->have_dtype = true;
    } else if (strcmp(field, "shape") == 0 && !es->have_shape) {
        rc = parse_u64_array(ps, t->shape, ST_MAX_DIMS, &t->ndim);
        es->have_shape = true;
    } else if (strcmp(field, "data_offsets") == 0 && !es->have_offsets) {
        uint64_t off[3];
        int n = 0;
        rc = parse_u64_array(ps, off, 3, &n);
        if (rc == 0 && n != 2) {
            err_set(ps->err, ps->errlen, "tensor \"%s\": data_offsets must have 2 elements", name);
            rc = -1;
        }
        t->begin = off[0];
        t->end = off[1];
        es->have_offsets = true;
    } else {
        err_set(ps->err, ps->errlen, "tensor \"%s\": unexpected or repeated field \"%s\"", name, field);
        rc = -1;
    }
    free(field);
    return rc;
}

/* {"dtype": "F32" or "BF16", "shape": [...], "data_offsets": [b, e]} in any order, each once. */
static int parse_tensor_entry(st_file *f, parser *ps, char *name)
{
    st_tensor *t = new_tensor(f, ps);
    if (!t) {
        free(name);
        return -1;
    }
    t->name = name;
    entry_state es = {.t = t};
    if (parse_object(ps, entry_member, &es) < 0)
        return -1;
    if (!es.have_dtype || !es.have_shape || !es.have_offsets) {
        err_set(ps->err, ps->errlen, "tensor \"%s\": missing %s", name,
                !es.have_dtype ? "dtype" : !es.have_shape ? "shape" : "data_offsets");
        return -1;
    }
    return 0;
}

/* What the header has given so far. */
typedef struct header_state {
    st_file *f;
    bool have_meta;
} header_state;

/* One entry of the header: the metadata, or a tensor. */
static int header_member(parser *ps, char *name, void *ctx)
{
    header_state *hs = ctx;
    if (strcmp(name, "__metadata__") != 0)
        return parse_tensor_entry(hs->f, ps, name);
    free(name);
    if (hs->have_meta) {
        err_set(ps->err, ps->errlen, "\"__metadata__\" appears twice");
        return -1;
    }
    hs->have_meta = true;
    return parse_object(ps, meta_member, hs->f);
}

static int parse_header(st_file *f, parser *ps)
{
    header_state hs = {.f = f};
    if (parse_object(ps, header_member, &hs) < 0)
        return -1;
    skip_ws(ps);
    if (ps->p != ps->end)
        return fail_at(ps, "unexpected data after the header object");
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Sizes, bounds, coverage and names: everything the data buffer must satisfy. */
static int check_layout(st_file *f, uint64_t data_len, char *err, size_t errlen)
{
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        const uint64_t size = t->dtype == ST_BF16 ? 2 : 4;
        uint64_t n = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] != 0 && n > UINT64_MAX / 4 / t->shape[d]) {
                err_set(err, errlen, "tensor \"%s\": shape is too large", t->name);
                return -1;
            }
            n *= t->shape[d];
        }
        t->numel = n;
        if (t->end < t->begin) {
            err_set(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu] end before they begin", t->name,
                    (unsigned long long)t->begin, (unsigned long long)t->end);
            return -1;
        }
        if (t->end > data_len) {
            err_set(err, errlen,
                    "tensor \"%s\": data_offsets [%llu, %llu] run past the end of the file (data is %llu bytes)",
                    t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)data_len);
            return -1;
        }
        if (t->end - t->begin != size * n) {
            err_set(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes but its shape needs %llu",
                    t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)(t->end - t->begin), (unsigned long long)(size * n));
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(f->tensors[j].name, t->name) == 0) {
                err_set(err, errlen, "tensor \"%s\" appears twice", t->name);
                return -1;
            }
    }
    size_t n_order = f->n_tensors > 0 ? (size_t)f->n_tensors : 1;
    st_tensor **order = malloc(n_order * sizeof *order);
    if (!order) {
        err_set(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_begin);
    uint64_t pos = 0;
    int rc = 0;
    for (int i = 0; i < f->n_tensors && rc == 0; i++) {
        const st_tensor *t = order[i];
        if (t->begin > pos) {
            err_set(err, errlen, "gap in the data buffer: bytes [%llu, %llu) before tensor \"%s\" belong to no tensor",
                    (unsigned long long)pos, (unsigned long long)t->begin, t->name);
            rc = -1;
        } else if (t->begin < pos) {
            err_set(err, errlen, "tensor \"%s\" at offset %llu overlaps tensor \"%s\"", t->name,
                    (unsigned long long)t->begin, order[i - 1]->name);
            rc = -1;
        }
        pos = t->end;
    }
    free(order);
    if (rc == 0 && pos != data_len) {
        err_set(err, errlen, "%llu bytes after the last tensor belong to no tensor",
                (unsigned long long)(data_len - pos));
        rc = -1;
    }
    return rc;
}

/* Parses and checks f->bytes, points every tensor at F32 data and hashes the bytes. */
static int parse_file(st_file *f, char *err, size_t errlen)
{
    if (f->len < 8) {
        err_set(err, errlen, "file is %zu bytes, too short for a safetensors header", f->len);
        return -1;
    }
    const unsigned char *base = f->bytes;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen > f->len - 8) {
        err_set(err, errlen, "header length %llu is larger than the file (%zu bytes)", (unsigned long long)hlen,
                f->len);
        return -1;
    }
    if (hlen > ST_MAX_HEADER) {
        err_set(err, errlen, "header length %llu exceeds the %u-byte limit", (unsigned long long)hlen, ST_MAX_HEADER);
        return -1;
    }
    parser ps = {(const char *)base + 8, (const char *)base + 8, (const char *)base + 8 + hlen, err, errlen};
    if (parse_header(f, &ps) < 0)
        return -1;
    uint64_t data_off = 8 + hlen, data_len = f->len - data_off;
    if (check_layout(f, data_len, err, errlen) < 0)
        return -1;

    /* F32 data is used where it lies when aligned (the buffer is; a header
     * padded to 8 bytes, as the format asks, keeps it so); the rest goes to the arena. */
    const unsigned char *data = base + data_off;
    bool aligned = (uintptr_t)data % sizeof(float) == 0;
    uint64_t arena_floats = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].dtype != ST_F32 || !aligned)
            arena_floats += f->tensors[i].numel;
    if (arena_floats > 0 && !(f->arena = malloc((size_t)arena_floats * sizeof *f->arena))) {
        err_set(err, errlen, "out of memory for %llu floats of tensor data", (unsigned long long)arena_floats);
        return -1;
    }
    float *next = f->arena;
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        const unsigned char *src = data + t->begin;
        if (t->dtype == ST_F32 && aligned) {
            t->data = (const float *)(const void *)src;
            continue;
        }
        if (t->dtype == ST_F32) {
            memcpy(next, src, (size_t)t->numel * sizeof *next);
        } else {
            /* bfloat16 is the high half of a float32: widening is exact. */
            for (uint64_t k = 0; k < t->numel; k++) {
                uint32_t u = (uint32_t)src[2 * k] << 16 | (uint32_t)src[2 * k + 1] << 24;
                memcpy(&next[k], &u, sizeof u);
            }
        }
        t->data = next;
        next += t->numel;
    }
    sha256_ctx h;
    sha256_init(&h);
    sha256_update(&h, f->bytes, f->len);
    unsigned char digest[32];
    sha256_final(&h, digest);
    sha256_hex(digest, f->sha256);
    return 0;
}

/* A 64-byte aligned buffer of len bytes (at least one), or NULL. */
static unsigned char *alloc_bytes(size_t len)
{
    void *p = NULL;
    return posix_memalign(&p, 64, len ? len : 1) == 0 ? p : NULL;
}

st_file *st_open(const char *path, char *err, size_t errlen)
{
    st_file *f = calloc(1, sizeof *f);
    int fd = -1;
    if (!f) {
        err_set(err, errlen, "out of memory");
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err_set(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        err_set(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        err_set(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if (sb.st_size < 8) {
        err_set(err, errlen, "file is %lld bytes, too short for a safetensors header", (long long)sb.st_size);
        goto fail;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX / 2) {
        err_set(err, errlen, "file is %lld bytes, larger than this machine can hold", (long long)sb.st_size);
        goto fail;
    }
    f->len = (size_t)sb.st_size;
    if (!(f->bytes = alloc_bytes(f->len))) {
        err_set(err, errlen, "out of memory reading %zu bytes", f->len);
        goto fail;
    }
    /* Read what the size said, and no more: a file that shrinks or grows while it is read is refused. */
    size_t got = 0;
    while (got < f->len) {
        ssize_t n = read(fd, f->bytes + got, f->len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err_set(err, errlen, "%s: read: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0) {
            err_set(err, errlen, "%s: the file shrank while it was read (%zu of %zu bytes)", path, got, f->len);
            goto fail;
        }
        got += (size_t)n;
    }
    char extra;
    if (read(fd, &extra, 1) > 0) {
        err_set(err, errlen, "%s: the file grew while it was read", path);
        goto fail;
    }
    close(fd);
    fd = -1;
    if (parse_file(f, err, errlen) < 0)
        goto fail;
    return f;

fail:
    if (fd >= 0)
        close(fd);
    st_close(f);
    return NULL;
}

st_file *st_open_mem(const void *data, size_t len, char *err, size_t errlen)
{
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->bytes = alloc_bytes(len))) {
        err_set(err, errlen, "out of memory");
        st_close(f);
        return NULL;
    }
    f->len = len;
    if (len)
        memcpy(f->bytes, data, len);
    if (parse_file(f, err, errlen) < 0) {
        st_close(f);
        return NULL;
    }
    return f;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    free(f->arena);
    free(f->bytes);
    free(f);
}

void st_release_data(st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        f->tensors[i].data = NULL;
    free(f->arena);
    free(f->bytes);
    f->arena = NULL;
    f->bytes = NULL;
}

int st_tensor_count(const st_file *f) { return f->n_tensors; }
const st_tensor *st_tensor_at(const st_file *f, int i) { return &f->tensors[i]; }
int st_meta_count(const st_file *f) { return f->n_meta; }
const st_meta *st_meta_at(const st_file *f, int i) { return &f->meta[i]; }
uint64_t st_file_size(const st_file *f) { return f->len; }
const char *st_sha256(const st_file *f) { return f->sha256; }

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}
