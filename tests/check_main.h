/* check_main.h -- the one way every Check test program runs its suite. */
#ifndef ATTNLM_CHECK_MAIN_H
#define ATTNLM_CHECK_MAIN_H

#include <check.h>
#include <stdlib.h>

/* Runs s and returns the process exit status: non-zero if any test failed. */
static inline int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
