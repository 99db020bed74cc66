/* check_main.h -- the one way every Check test program builds and runs its suite.
 *
 * A program whose tests all run once, in one test case named like the suite:
 *
 *     int main(void) { return CHECK_MAIN("sha256", test_known_vectors, test_file_digest); }
 *
 * One with loop tests, a checked fixture, a timeout or several test cases:
 *
 *     int main(void)
 *     {
 *         const check_case cases[] = {
 *             {"parity", CHECK_TESTS(CHECK_LOOP(test_parity, N), CHECK_TEST(test_bad_calls)), .timeout = 120},
 *             {"pool", CHECK_TESTS(CHECK_TEST(test_pool)), .setup = pool_setup, .teardown = pool_teardown},
 *         };
 *         return check_main("model", cases, sizeof cases / sizeof *cases);
 *     }
 *
 * Check 0.15's START_TEST(x) defines `static const TTest *x`, which is what both take.
 */
#ifndef ATTNLM_CHECK_MAIN_H
#define ATTNLM_CHECK_MAIN_H

#include <check.h>
#include <stddef.h>
#include <stdlib.h>

/* A test: run once, or, with loops > 0, as a loop test with _i = 0 .. loops - 1. */
typedef struct check_test {
    const TTest *test;
    int loops;
} check_test;

#define CHECK_TEST(t) {.test = (t)}
#define CHECK_LOOP(t, n) {.test = (t), .loops = (n)}
/* The tests of a case, in order; the list ends at a zero entry, which this adds. */
#define CHECK_TESTS(...) .tests = (const check_test[]){__VA_ARGS__, {0}}

/* A test case: its tests, a checked fixture around each test (NULL for none), and a
 * timeout in seconds (0 keeps Check's default). */
typedef struct check_case {
    const char *name;
    const check_test *tests;
    SFun setup, teardown;
    double timeout;
} check_case;

/* Runs s and returns the process exit status: non-zero if any test failed. */
static inline int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Builds the suite `name` from its cases, runs it, returns the exit status. */
static inline int check_main(const char *name, const check_case *cases, size_t n_cases)
{
    Suite *s = suite_create(name);
    for (size_t c = 0; c < n_cases; c++) {
        TCase *tc = tcase_create(cases[c].name);
        if (cases[c].setup || cases[c].teardown)
            tcase_add_checked_fixture(tc, cases[c].setup, cases[c].teardown);
        if (cases[c].timeout > 0)
            tcase_set_timeout(tc, cases[c].timeout);
        for (const check_test *t = cases[c].tests; t->test; t++) {
            if (t->loops > 0)
                tcase_add_loop_test(tc, t->test, 0, t->loops);
            else
                tcase_add_test(tc, t->test);
        }
        suite_add_tcase(s, tc);
    }
    return run_suite(s);
}

/* Runs the given tests, each once, in one test case named like the suite. */
static inline int check_main_tests(const char *name, const TTest *const *tests)
{
    Suite *s = suite_create(name);
    TCase *tc = tcase_create(name);
    for (; *tests; tests++)
        tcase_add_test(tc, *tests);
    suite_add_tcase(s, tc);
    return run_suite(s);
}

#define CHECK_MAIN(name, ...) check_main_tests((name), (const TTest *const[]){__VA_ARGS__, NULL})

#endif
