/* utf8.c -- see utf8.h. */
#include "utf8.h"

#include <string.h>

/* Bytes a UTF-8 character has when it starts with lead byte c; 0 if c cannot lead. */
static int utf8_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

size_t utf8_complete(const unsigned char *s, size_t len)
{
    /* Only the last (up to) 3 bytes can be an unfinished character. */
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = len; i > start; i--) {
        unsigned char c = s[i - 1];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for its lead */
        int need = utf8_len(c);
        if (need > 1 && len - (i - 1) < (size_t)need) {
            for (size_t j = i; j < len; j++) /* only a valid prefix can still complete */
                if ((s[j] & 0xC0) != 0x80)
                    return len;
            return i - 1;
        }
        return len;
    }
    return len;
}

/* Bytes the character starting with lead b takes, and the range its second
 * byte must fall in (which rules out overlongs, surrogates and > U+10FFFF);
 * 0 if b cannot start a character. */
static int utf8_lead(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b < 0xC2)
        return 0;
    if (b < 0xE0)
        return 2;
    if (b < 0xF0) {
        if (b == 0xE0)
            *lo = 0xA0;
        if (b == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (b < 0xF5) {
        if (b == 0xF0)
            *lo = 0x90;
        if (b == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

size_t utf8_sanitize(const unsigned char *s, size_t len, char *out)
{
    size_t i = 0, o = 0;
    while (i < len) {
        unsigned char lo, hi;
        int need = utf8_lead(s[i], &lo, &hi);
        size_t k = 1;
        /* Accept continuation bytes while they are valid for this lead. */
        while (need > 1 && k < (size_t)need && i + k < len) {
            unsigned char c = s[i + k];
            if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF))
                break;
            k++;
        }
        if (need >= 1 && k == (size_t)need) {
            memcpy(out + o, s + i, k);
            o += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += k;
    }
    return o;
}

bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char lo, hi;
        int need = utf8_lead(s[i], &lo, &hi);
        if (need == 0 || i + (size_t)need > len)
            return false;
        for (int k = 1; k < need; k++) {
            unsigned char c = s[i + (size_t)k];
            if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF))
                return false;
        }
        i += (size_t)need;
    }
    return true;
}
