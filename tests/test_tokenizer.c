/* test_tokenizer.c -- byte tokenizer and the UTF-8 completeness rule of streams. */
#include "tokenizer.h"

#include "check_main.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_encode_decode)
{
    const char *text = "Whale \xe2\x80\x94 \xc2\xbd!"; /* "Whale — ½!" */
    size_t len = strlen(text);
    int ids[32];
    ck_assert_uint_eq(tok_encode(text, len, ids), len + 1);
    ck_assert_int_eq(ids[0], TOK_BOS);
    ck_assert_int_eq(ids[1], 'W');
    ck_assert_int_eq(ids[7], 0xe2);
    char out[32];
    ck_assert_uint_eq(tok_decode(ids, len + 1, out), len);
    ck_assert_mem_eq(out, text, len);
    int bad[2] = {65, 257};
    ck_assert_uint_eq(tok_decode(bad, 2, out), (size_t)-1);
    bad[1] = -1;
    ck_assert_uint_eq(tok_decode(bad, 2, out), (size_t)-1);
    ck_assert_uint_eq(tok_encode("", 0, ids), 1);
}
END_TEST

START_TEST(test_utf8_complete)
{
    const unsigned char *euro = (const unsigned char *)"a\xe2\x82\xac"; /* a€ */
    ck_assert_uint_eq(tok_utf8_complete(euro, 4), 4);
    ck_assert_uint_eq(tok_utf8_complete(euro, 3), 1); /* half a euro sign is held back */
    ck_assert_uint_eq(tok_utf8_complete(euro, 2), 1);
    ck_assert_uint_eq(tok_utf8_complete(euro, 1), 1);
    const unsigned char *emoji = (const unsigned char *)"\xf0\x9f\x90\xb3"; /* 🐳 */
    for (size_t n = 1; n < 4; n++)
        ck_assert_uint_eq(tok_utf8_complete(emoji, n), 0);
    ck_assert_uint_eq(tok_utf8_complete(emoji, 4), 4);
    /* bytes that can never complete are released, not held forever */
    ck_assert_uint_eq(tok_utf8_complete((const unsigned char *)"ab\x80", 3), 3);
    ck_assert_uint_eq(tok_utf8_complete((const unsigned char *)"ab\xff", 3), 3);
    ck_assert_uint_eq(tok_utf8_complete((const unsigned char *)"\xe2" "a", 2), 2);
    ck_assert_uint_eq(tok_utf8_complete((const unsigned char *)"", 0), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("bytes");
    tcase_add_test(tc, test_encode_decode);
    tcase_add_test(tc, test_utf8_complete);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
