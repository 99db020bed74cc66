/* ui.c -- serves the inspector page embedded in the binary (ui.h): lookup by
 * path, conditional GET by ETag, and the headers every file goes out with.
 */
#define _POSIX_C_SOURCE 200809L
#include "ui.h"

#include <microhttpd.h>
#include <string.h>

bool ui_is_path(const char *path) { return strcmp(path, "/") == 0 || strncmp(path, "/ui/", 4) == 0; }

const ui_asset *ui_find(const char *path)
{
    for (int i = 0; i < UI_N_ASSETS; i++)
        if (strcmp(UI_ASSETS[i].path, path) == 0)
            return &UI_ASSETS[i];
    return NULL;
}

bool ui_etag_matches(const char *h, const char *etag)
{
    size_t n = strlen(etag);
    while (h && *h) {
        while (*h == ' ' || *h == '\t' || *h == ',')
            h++;
        if (*h == '*')
            return true;
        if (strncmp(h, "W/", 2) == 0) /* a weak comparison is what If-None-Match asks for */
            h += 2;
        size_t len = strcspn(h, ",");
        while (len > 0 && (h[len - 1] == ' ' || h[len - 1] == '\t'))
            len--;
        if (len == n && memcmp(h, etag, n) == 0)
            return true;
        h += strcspn(h, ",");
    }
    return false;
}

struct MHD_Response *ui_response(const ui_asset *a, const char *if_none_match, unsigned *status)
{
    bool fresh = ui_etag_matches(if_none_match, a->etag);
    struct MHD_Response *r = fresh ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
                                   : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return NULL;
    *status = fresh ? MHD_HTTP_NOT_MODIFIED : MHD_HTTP_OK;
    if (!fresh)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, a->type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, a->etag);
    /* Always revalidated (a 304 costs no body): a new binary's page is seen at once. */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "Content-Security-Policy", UI_CSP);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    return r;
}
