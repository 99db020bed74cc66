/* test_sha256.c -- SHA-256 against the FIPS 180-4 examples, chunking, files. */
#define _POSIX_C_SOURCE 200809L
#include "sha256.h"
#include "err.h"

#include "check_main.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void digest_hex(const void *data, size_t len, char hex[65])
{
    sha256_ctx c;
    unsigned char d[32];
    sha256_init(&c);
    sha256_update(&c, data, len);
    sha256_final(&c, d);
    sha256_hex(d, hex);
}

START_TEST(test_known_vectors)
{
    char hex[65];
    digest_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    digest_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    digest_hex(m448, strlen(m448), hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* One million 'a', fed in uneven chunks. */
    char a[997];
    memset(a, 'a', sizeof a);
    sha256_ctx c;
    sha256_init(&c);
    size_t left = 1000000;
    for (size_t k = 1; left; k = k % 900 + 13) {
        size_t n = k < left ? k : left;
        sha256_update(&c, a, n);
        left -= n;
    }
    unsigned char d[32];
    sha256_final(&c, d);
    sha256_hex(d, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
END_TEST

START_TEST(test_split_anywhere_same_digest)
{
    unsigned char msg[200];
    for (int i = 0; i < 200; i++)
        msg[i] = (unsigned char)(i * 37 + 11);
    char whole[65], part[65];
    digest_hex(msg, sizeof msg, whole);
    for (size_t cut = 0; cut <= sizeof msg; cut++) {
        sha256_ctx c;
        unsigned char d[32];
        sha256_init(&c);
        sha256_update(&c, msg, cut);
        sha256_update(&c, msg + cut, sizeof msg - cut);
        sha256_final(&c, d);
        sha256_hex(d, part);
        ck_assert_str_eq(part, whole);
    }
}
END_TEST

START_TEST(test_file_digest)
{
    char path[] = "/tmp/attnlm-sha-XXXXXX", hex[65], want[65], err[ATTNLM_ERR_LEN];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    char buf[150000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char)(i % 251);
    ck_assert_int_eq(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    close(fd);
    ck_assert_int_eq(sha256_file(path, hex, err, sizeof err), 0);
    digest_hex(buf, sizeof buf, want);
    ck_assert_str_eq(hex, want);
    unlink(path);
    ck_assert_int_eq(sha256_file(path, hex, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, path));
    /* A directory opens but cannot be read: the reason is named. */
    ck_assert_int_eq(sha256_file("/", hex, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "cannot read /: Is a directory") != NULL, "%s", err);
}
END_TEST

/* RFC 4231's test cases 1, 2, 4, 6 and 7 (keys up to 131 bytes; messages in parts). */
START_TEST(test_hmac_rfc4231)
{
    unsigned char k1[20], k4[25], k6[131], out[32];
    char hex[65];
    memset(k1, 0x0b, sizeof k1);
    for (int i = 0; i < 25; i++)
        k4[i] = (unsigned char)(i + 1);
    memset(k6, 0xaa, sizeof k6);
    unsigned char d4[50];
    memset(d4, 0xcd, sizeof d4);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    const char *m7 = "This is a test using a larger than block-size key and a larger than block-size data. The key "
                     "needs to be hashed before being used by the HMAC algorithm.";
    struct {
        const void *key;
        size_t key_len;
        const void *msg;
        size_t len;
        const char *want;
    } cases[] = {
        {k1, 20, "Hi There", 8, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", 4, "what do ya want for nothing?", 28,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {k4, 25, d4, 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {k6, 131, m6, strlen(m6), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {k6, 131, m7, strlen(m7), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        for (size_t cut = 0; cut <= cases[i].len; cut += cases[i].len / 3 + 1) {
            const void *parts[2] = {cases[i].msg, (const char *)cases[i].msg + cut};
            const size_t lens[2] = {cut, cases[i].len - cut};
            hmac_sha256(cases[i].key, cases[i].key_len, parts, lens, 2, out);
            sha256_hex(out, hex);
            ck_assert_str_eq(hex, cases[i].want);
        }
    }
}
END_TEST

int main(void)
{
    return CHECK_MAIN("sha256", test_known_vectors, test_split_anywhere_same_digest, test_file_digest, test_hmac_rfc4231);
}
