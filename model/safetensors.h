/* safetensors.h -- a strict, read-only reader of safetensors files of F32
 * (and BF16) tensors.
 *
 * The whole file is read into memory the reader owns, so nothing done to the
 * file afterwards (truncated, overwritten, deleted) can change or break what
 * was loaded; its SHA-256 is of exactly those bytes.  F32 data is used in
 * place when aligned; BF16 tensors, and F32 data an unpadded header leaves
 * misaligned, are widened or copied into an F32 arena.  Everything the header
 * says is checked before it is used: entry shapes and sizes, data offsets
 * inside the file, tensors covering the data buffer without gaps or overlaps,
 * unique names, metadata values that are strings.  It knows nothing of what
 * the tensors mean; model.c checks that.
 *
 * An st_file is immutable once opened and may be read by many threads.
 */
#ifndef ATTNLM_SAFETENSORS_H
#define ATTNLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (64u << 20) /* header bytes; larger files are refused */
#define ST_MAX_ENTRIES 100000

/* Element types the reader accepts. */
typedef enum { ST_F32, ST_BF16 } st_dtype;

/* One tensor of the file. */
typedef struct st_tensor {
    char *name;
    st_dtype dtype;        /* as stored in the file */
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end;   /* byte offsets into the data buffer */
    const float *data;     /* [numel] as F32 (BF16 widened), 4-byte aligned; NULL once released */
} st_tensor;

/* One metadata entry (string -> string). */
typedef struct st_meta {
    char *key;
    char *value;
} st_meta;

typedef struct st_file st_file;

/* Reads and validates path.  Returns NULL and a message naming the problem
 * in err on failure.  The caller frees the result with st_close. */
st_file *st_open(const char *path, char *err, size_t errlen);
/* The same for a file's bytes already in memory (copied). */
st_file *st_open_mem(const void *data, size_t len, char *err, size_t errlen);
void st_close(st_file *f);
/* Frees the tensors' data (the file's bytes and the arena), keeping names,
 * shapes, metadata and hash: for a reader that has copied what it needs. */
void st_release_data(st_file *f);

int st_tensor_count(const st_file *f);
const st_tensor *st_tensor_at(const st_file *f, int i);
/* NULL when there is no tensor of that name. */
const st_tensor *st_find(const st_file *f, const char *name);

int st_meta_count(const st_file *f);
const st_meta *st_meta_at(const st_file *f, int i);
/* The value of key, or NULL when the metadata has no such key. */
const char *st_meta_get(const st_file *f, const char *key);

/* Whole file size in bytes. */
uint64_t st_file_size(const st_file *f);
/* Lower-case hex SHA-256 of the bytes read. */
const char *st_sha256(const st_file *f);

#endif
