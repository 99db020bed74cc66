/* test_tokenizer.c -- byte tokenizer and the UTF-8 completeness rule of streams. */
#include "tokenizer.h"
#include "utf8.h"

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
    ck_assert_uint_eq(utf8_complete(euro, 4), 4);
    ck_assert_uint_eq(utf8_complete(euro, 3), 1); /* half a euro sign is held back */
    ck_assert_uint_eq(utf8_complete(euro, 2), 1);
    ck_assert_uint_eq(utf8_complete(euro, 1), 1);
    const unsigned char *emoji = (const unsigned char *)"\xf0\x9f\x90\xb3"; /* 🐳 */
    for (size_t n = 1; n < 4; n++)
        ck_assert_uint_eq(utf8_complete(emoji, n), 0);
    ck_assert_uint_eq(utf8_complete(emoji, 4), 4);
    /* bytes that can never complete are released, not held forever */
    ck_assert_uint_eq(utf8_complete((const unsigned char *)"ab\x80", 3), 3);
    ck_assert_uint_eq(utf8_complete((const unsigned char *)"ab\xff", 3), 3);
    ck_assert_uint_eq(utf8_complete((const unsigned char *)"\xe2" "a", 2), 2);
    ck_assert_uint_eq(utf8_complete((const unsigned char *)"", 0), 0);
}
END_TEST


/* Expected outputs are Python's bytes.decode("utf-8", "replace"). */
static const struct {
    const char *in;
    size_t in_len;
    const char *out;
    size_t out_len;
} SANITIZE[] = {
    {"", 0, "", 0},
    {"\x70\x6c\x61\x69\x6e", 5, "\x70\x6c\x61\x69\x6e", 5},
    {"\x68\xc3\xa9", 3, "\x68\xc3\xa9", 3},
    {"\xe2\x82\xac", 3, "\xe2\x82\xac", 3},
    {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80", 4},
    {"\xe2\x82", 2, "\xef\xbf\xbd", 3},
    {"\xe2\x41", 2, "\xef\xbf\xbd\x41", 4},
    {"\xff", 1, "\xef\xbf\xbd", 3},
    {"\xc0\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},
    {"\xe0\x80\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9},
    {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9},
    {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12},
    {"\x80\xbf", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},
    {"\xf0\x9f\x98", 3, "\xef\xbf\xbd", 3},
    {"\x61\xf0\x9f\x98\x62", 5, "\x61\xef\xbf\xbd\x62", 5},
    {"\xc3", 1, "\xef\xbf\xbd", 3},
    {"\xe0\xa0", 2, "\xef\xbf\xbd", 3},
    {"\xf5\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},
    {"\xc2\xc2\xa9", 3, "\xef\xbf\xbd\xc2\xa9", 5},
    {"\x9f\xe0\xa0\x9f\x82", 5, "\xef\xbf\xbd\xe0\xa0\x9f\xef\xbf\xbd", 9},
    {"\x82", 1, "\xef\xbf\xbd", 3},
    {"\xa0\xc2\xff\x41\xbf\x80\xe0\xed", 8, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\x41\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 22},
    {"\xe2\xf0\x80\xf4", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12},
    {"\x41\x9f\xc2\xe2", 4, "\x41\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 10},
    {"\xbf\x82\xa0\xe2\xbf", 5, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12},
    {"\xbf\xf4", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},
    {"\xbf\xbf\x41\x82\x41\xc2\xa0\xc2", 8, "\xef\xbf\xbd\xef\xbf\xbd\x41\xef\xbf\xbd\x41\xc2\xa0\xef\xbf\xbd", 16},
    {"\x82\xbf\xc3", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9},
    {"\xc2\xf0\xff\xff\xc2\xbf", 6, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xc2\xbf", 14},
    {"\xe2\xc3\x41\xe0", 4, "\xef\xbf\xbd\xef\xbf\xbd\x41\xef\xbf\xbd", 10},
    {"\xbf\xbf\xc3\x80\xe0\xc3\x82", 7, "\xef\xbf\xbd\xef\xbf\xbd\xc3\x80\xef\xbf\xbd\xc3\x82", 13},
    {"\xf4", 1, "\xef\xbf\xbd", 3},
    {"\x80\xc3\xe0\x82\xc3\xed", 6, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 18},
    {"\xbf\xed\xed\x9f\xbf\x41", 6, "\xef\xbf\xbd\xef\xbf\xbd\xed\x9f\xbf\x41", 10},
    {"\x41\x9f\xe0\x82\xe2", 5, "\x41\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 13},
    {"\xf0", 1, "\xef\xbf\xbd", 3},
    {"\xe0\xe2\xf4\x82\x41\xed\x41", 7, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\x41\xef\xbf\xbd\x41", 14},
    {"\xf4\xc2\x80", 3, "\xef\xbf\xbd\xc2\x80", 5},
    {"\x82\xed\xe0\xf0", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12},
};

START_TEST(test_sanitize_like_python)
{
    char out[64];
    size_t n = utf8_sanitize((const unsigned char *)SANITIZE[_i].in, SANITIZE[_i].in_len, out);
    ck_assert_uint_eq(n, SANITIZE[_i].out_len);
    ck_assert_mem_eq(out, SANITIZE[_i].out, n);
}
END_TEST

int main(void)
{
    const check_case bytes = {"bytes", CHECK_TESTS(CHECK_TEST(test_encode_decode), CHECK_TEST(test_utf8_complete),
                                                   CHECK_LOOP(test_sanitize_like_python,
                                                              (int)(sizeof SANITIZE / sizeof *SANITIZE)))};
    return check_main("tokenizer", &bytes, 1);
}
