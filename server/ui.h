/* ui.h -- the inspector page's files, embedded in the binary at build time
 * (tools/embed.c writes them from ui/ into the generated ui_assets.c), and
 * the HTTP answer for each: content type, strong ETag, caching and a
 * Content-Security-Policy that keeps every request on the server's origin.
 */
#ifndef ATTNLM_UI_H
#define ATTNLM_UI_H

#include <stdbool.h>
#include <stddef.h>

struct MHD_Response;

/* One served file. */
typedef struct ui_asset {
    const char *path;          /* URL path: "/" for the page, "/ui/..." for the rest */
    const unsigned char *data;
    size_t len;
    const char *type;          /* Content-Type */
    const char *etag;          /* quoted, strong */
} ui_asset;

/* The generated table (ui_assets.c). */
extern const ui_asset UI_ASSETS[];
extern const int UI_N_ASSETS;

/* The header that confines the page to its own origin. */
#define UI_CSP                                                                                                  \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " \
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* Whether path is the page's: "/" or anything under "/ui/". */
bool ui_is_path(const char *path);
/* The file served at path, or NULL. */
const ui_asset *ui_find(const char *path);
/* Whether an If-None-Match header value (a list of ETags, or "*") names etag. */
bool ui_etag_matches(const char *if_none_match, const char *etag);
/* The answer for asset a: 200 with its bytes, or 304 when if_none_match
 * (may be NULL) names its ETag; *status says which.  Both carry the ETag,
 * Cache-Control, the CSP and nosniff.  NULL on out of memory. */
struct MHD_Response *ui_response(const ui_asset *a, const char *if_none_match, unsigned *status);

#endif
