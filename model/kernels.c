/* kernels.c -- which of the kernel tables this CPU runs, and the best of them. */
#include "kernels.h"

bool kern_runs(const kern_ops *k)
{
    if (k == &kern_ops_generic)
        return true;
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (k == &kern_ops_avx2)
        return avx2;
    if (k == &kern_ops_avx512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return false;
}

const kern_ops *kern_best(void)
{
#if defined(__x86_64__)
    if (kern_runs(&kern_ops_avx512))
        return &kern_ops_avx512;
    if (kern_runs(&kern_ops_avx2))
        return &kern_ops_avx2;
#endif
    return &kern_ops_generic;
}
