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

int main(void)
{
    return CHECK_MAIN("sha256", test_known_vectors, test_split_anywhere_same_digest, test_file_digest);
}
