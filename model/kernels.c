/* kernels.c -- packing weight matrices into the kernels' layouts (kernels.h),
 * and which of the kernel tables this CPU runs.
 */
#define _GNU_SOURCE /* syscall */
#include "kernels.h"

#include "err.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint16_t kern_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kern_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

const char *kern_prec_name(kern_prec p)
{
    static const char *const names[KERN_PREC_COUNT] = {"f32", "bf16", "int8"};
    return p >= 0 && p < KERN_PREC_COUNT ? names[p] : "?";
}

/* Bytes of one panel of a [*, k] matrix at precision p. */
static size_t panel_bytes(int k, kern_prec p)
{
    size_t b = p == KERN_F32    ? (size_t)k * KERN_NR * 4
               : p == KERN_BF16 ? (size_t)((k + 1) / 2) * KERN_NR * 4
                                : (size_t)((k + 3) / 4) * KERN_NR * 4;
    return (b + 63) & ~(size_t)63;
}

size_t kern_scratch_bytes(int k)
{
    /* the rows of a block, then the block's int8 row scales */
    return (size_t)KERN_MB * ((size_t)KERN_XWORDS(k) * 4 + sizeof(float));
}

void kmat_free(kmat *w)
{
    if (!w)
        return;
    free(w->data);
    free(w->scale);
    free(w->colsum);
    memset(w, 0, sizeof *w);
}

size_t kmat_bytes(const kmat *w)
{
    size_t cols = (size_t)w->panels * KERN_NR;
    return (size_t)w->panels * w->panel_bytes + (w->scale ? cols * sizeof *w->scale : 0) +
           (w->colsum ? cols * sizeof *w->colsum : 0);
}

int kmat_pack(kmat *w, const float *src, int ld, int n, int k, kern_prec prec, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->n = n;
    w->k = k;
    w->prec = prec;
    w->panels = (n + KERN_NR - 1) / KERN_NR;
    w->panel_bytes = panel_bytes(k, prec);
    size_t total = (size_t)w->panels * w->panel_bytes, cols = (size_t)w->panels * KERN_NR;
    void *data = NULL;
    if (posix_memalign(&data, 64, total ? total : 64) != 0) {
        err_set(err, errlen, "out of memory for a packed [%d, %d] matrix", n, k);
        return -1;
    }
    w->data = data;
    memset(w->data, 0, total);
    if (prec == KERN_INT8 && (!(w->scale = calloc(cols, sizeof *w->scale)) ||
                              !(w->colsum = calloc(cols, sizeof *w->colsum)))) {
        kmat_free(w);
        err_set(err, errlen, "out of memory for a packed [%d, %d] matrix", n, k);
        return -1;
    }
    for (int j = 0; j < n; j++) {
        const float *row = src + (size_t)j * ld;
        unsigned char *panel = w->data + (size_t)(j / KERN_NR) * w->panel_bytes;
        const int c = j % KERN_NR;
        switch (prec) {
        case KERN_F32: {
            float *p = (float *)(void *)panel;
            for (int i = 0; i < k; i++)
                p[(size_t)i * KERN_NR + c] = row[i];
            break;
        }
        case KERN_BF16: {
            uint16_t *p = (uint16_t *)(void *)panel;
            for (int i = 0; i < k; i++) {
                uint16_t b = kern_bf16(row[i]);
                if (!isfinite(kern_bf16_to_f32(b))) {
                    kmat_free(w);
                    err_set(err, errlen, "weight %g at [%d, %d] is too large for bf16", (double)row[i], j, i);
                    return -1;
                }
                p[((size_t)(i / 2) * KERN_NR + c) * 2 + (i % 2)] = b;
            }
            break;
        }
        default: {
            int8_t *p = (int8_t *)(void *)panel;
            float mx = 0.0f;
            for (int i = 0; i < k; i++)
                mx = fmaxf(mx, fabsf(row[i]));
            const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
            int32_t sum = 0;
            for (int i = 0; i < k; i++) {
                float y = row[i] * inv;
                int q = (int)(y + (y < 0.0f ? -0.5f : 0.5f));
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                p[((size_t)(i / 4) * KERN_NR + c) * 4 + (i % 4)] = (int8_t)q;
                sum += q;
            }
            w->scale[j] = mx / 127.0f;
            w->colsum[j] = sum;
            break;
        }
        }
    }
    return 0;
}

float kmat_get(const kmat *w, int j, int k)
{
    const unsigned char *panel = w->data + (size_t)(j / KERN_NR) * w->panel_bytes;
    const int c = j % KERN_NR;
    switch (w->prec) {
    case KERN_F32: return ((const float *)(const void *)panel)[(size_t)k * KERN_NR + c];
    case KERN_BF16:
        return kern_bf16_to_f32(((const uint16_t *)(const void *)panel)[((size_t)(k / 2) * KERN_NR + c) * 2 + k % 2]);
    default: return w->scale[j] * ((const int8_t *)(const void *)panel)[((size_t)(k / 4) * KERN_NR + c) * 4 + k % 4];
    }
}

const kern_ops *const kern_tables[] = {
#if defined(__x86_64__)
    &kern_ops_amx, &kern_ops_avx512bf16, &kern_ops_avx512vnni, &kern_ops_avx512, &kern_ops_avx2,
#endif
    &kern_ops_generic, NULL};

#if defined(__x86_64__)
/* Whether the CPU has AMX tiles with bf16 and int8 products and the kernel
 * lets this process use them: Linux hands out the tile state (8 KB per
 * thread to save on a switch) only to processes that ask for it. */
static bool amx_usable(void)
{
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    /* CPUID leaf 7's EDX: AMX-BF16, AMX-TILE, AMX-INT8 (clang 14's cpuid.h does not name them) */
    const unsigned want = 1u << 22 | 1u << 24 | 1u << 25;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (d & want) != want)
        return false;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

bool kern_runs(const kern_ops *k)
{
    if (k == &kern_ops_generic)
        return true;
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    if (k == &kern_ops_avx2)
        return avx2;
    if (k == &kern_ops_avx512)
        return avx512;
    if (k == &kern_ops_avx512vnni)
        return vnni;
    bool bf16 = vnni && __builtin_cpu_supports("avx512bf16");
    if (k == &kern_ops_avx512bf16)
        return bf16;
    if (k == &kern_ops_amx)
        return bf16 && amx_usable();
#endif
    return false;
}

const kern_ops *kern_best(void)
{
    for (int i = 0; kern_tables[i]; i++)
        if (kern_runs(kern_tables[i]))
            return kern_tables[i];
    return &kern_ops_generic;
}

const kern_ops *kern_named(const char *name, char *err, size_t errlen)
{
    if (!name || !*name || strcmp(name, "auto") == 0)
        return kern_best();
    char runs[128] = "";
    size_t used = 0;
    for (int i = 0; kern_tables[i]; i++) {
        if (!kern_runs(kern_tables[i]))
            continue;
        if (strcmp(kern_tables[i]->name, name) == 0)
            return kern_tables[i];
        if (used < sizeof runs)
            used += (size_t)snprintf(runs + used, sizeof runs - used, "%s%s", used ? ", " : "", kern_tables[i]->name);
    }
    for (int i = 0; kern_tables[i]; i++)
        if (strcmp(kern_tables[i]->name, name) == 0) {
            err_set(err, errlen, "\"%s\": this CPU (or its operating system) does not run them; it runs auto, %s",
                    name, runs);
            return NULL;
        }
    err_set(err, errlen, "\"%s\": no such kernels; this CPU runs auto, %s", name, runs);
    return NULL;
}
