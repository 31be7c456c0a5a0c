/*
 * weir.h: write a Weir stage in C.
 *
 * A stage defines two functions, `weir_init` and `weir_process` (and, if it keeps windows,
 * `weir_on_watermark`). `sdk/weir.c` turns them into the exports of the `stage` world of
 * `wit/weir.wit`, so a stage never handles the generated bindings in `sdk/gen/` itself:
 *
 *     #include "weir.h"
 *
 *     bool weir_init(weir_bytes config, weir_buf *error) { return true; }
 *
 *     bool weir_process(const weir_context *cx, const weir_record *record, weir_out *out,
 *                       weir_buf *error) {
 *         weir_span value = weir_out_put(out, record->value.ptr, record->value.len);
 *         weir_emit(out, 0, weir_out_key(out, record), value, record->timestamp_ms,
 *                   record->headers);
 *         return true;
 *     }
 *
 * Memory: everything a stage is handed is borrowed for the duration of the call. Output goes
 * into a `weir_out`, whose buffers the host takes over when the call returns. Running out of
 * memory traps; the host then replaces the instance, as after any trap.
 *
 * Errors: `weir_process` returns false after writing a message into `error`; the record goes
 * to the dead-letter output with that message and the rest of the batch carries on. A trap is
 * for bugs only.
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gen/stage.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A range of an output batch's bytes (or headers): `start` and `len`. */
typedef weir_plugin_types_span_t weir_span;

/* Bytes borrowed from the host; valid until the call that was handed them returns. */
typedef struct weir_bytes {
    const uint8_t *ptr;
    size_t len;
} weir_bytes;

/* A growable byte buffer (malloc'd; allocation failure traps). */
typedef struct weir_buf {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} weir_buf;

/* Makes room for `additional` more bytes. */
void weir_buf_reserve(weir_buf *buf, size_t additional);

/* Appends `len` bytes. */
static inline void weir_buf_push(weir_buf *buf, const void *bytes, size_t len) {
    if (buf->cap - buf->len < len) weir_buf_reserve(buf, len);
    if (len) memcpy(buf->ptr + buf->len, bytes, len);
    buf->len += len;
}

/* Appends one byte. */
static inline void weir_buf_byte(weir_buf *buf, uint8_t byte) {
    if (buf->cap == buf->len) weir_buf_reserve(buf, 1);
    buf->ptr[buf->len++] = byte;
}

/* Appends a NUL-terminated string (without the NUL). */
static inline void weir_buf_str(weir_buf *buf, const char *text) {
    weir_buf_push(buf, text, strlen(text));
}

/* Appends `n` in decimal, as JSON writes an integer. */
void weir_buf_i64(weir_buf *buf, int64_t n);

/* Appends `text` (UTF-8) as a quoted JSON string, escaped as serde_json escapes it: `"` and
 * `\` with a backslash, control characters as \b \f \n \r \t or \u00XX, the rest as is. */
void weir_buf_json_string(weir_buf *buf, const uint8_t *text, size_t len);

/* Frees the buffer and leaves it empty. */
void weir_buf_free(weir_buf *buf);

/* Where the records of a batch come from, and when the host handed it over. */
typedef struct weir_context {
    /* Source stream (for Kafka: the topic), UTF-8. */
    weir_bytes topic;
    /* Source partition. */
    int32_t partition;
    /* Wall-clock time the host handed the batch over, ms since the Unix epoch. Use it
     * instead of a clock, so that the output is a function of the input. */
    int64_t processing_time_ms;
} weir_context;

/* One input record. */
typedef struct weir_record {
    /* Index of the record in its batch. */
    uint32_t index;
    /* Whether the record has a key (an empty key is not the same as no key). */
    bool has_key;
    /* The key, when `has_key`. */
    weir_bytes key;
    /* The value. */
    weir_bytes value;
    /* Event time, ms since the Unix epoch. */
    int64_t timestamp_ms;
    /* Position in the source partition (for Kafka: the offset). */
    int64_t offset;
    /* The record's headers. The output batch starts with the input batch's headers, so this
     * span is also valid for `weir_emit`: passing it on keeps the headers. */
    weir_span headers;
} weir_record;

/* The output of one call: records pointing into one byte buffer, as the host receives them. */
typedef struct weir_out {
    /* Keys and values of the emitted records. A stage may append to it directly: note
     * `data.len` first, append, then `weir_out_since` gives the span. */
    weir_buf data;
    /* The emitted records. */
    weir_plugin_types_list_output_record_t records;
    size_t records_cap;
    /* The headers: the input batch's, then any added by `weir_out_header`. */
    weir_plugin_types_list_header_t headers;
    size_t headers_cap;
    /* The records that failed. */
    weir_plugin_types_list_record_error_t errors;
    size_t errors_cap;
    /* The input record being processed, stamped on what is emitted meanwhile. */
    stage_option_u32_t current;
    /* Where `weir_out_key` put the last key. */
    weir_span key;
} weir_out;

/* Copies `len` bytes into the output's data; returns where they are. */
weir_span weir_out_put(weir_out *out, const void *bytes, size_t len);

/* The span of the bytes appended to `out->data` since its length was `mark`. */
static inline weir_span weir_out_since(const weir_out *out, size_t mark) {
    return (weir_span){(uint32_t)mark, (uint32_t)(out->data.len - mark)};
}

/* Copies the record's key into the output's data and returns its span, or returns NULL for a
 * record without a key; the span is stored in `out`, valid until the next call. */
const weir_span *weir_out_key(weir_out *out, const weir_record *record);

/* Appends a header; returns its index. Headers added one after another form a span. */
uint32_t weir_out_header(weir_out *out, const char *name, const void *value, size_t len);

/* Emits a record to output `output` (0 is the default output, n the n-th name declared with
 * `weir_add_output`). `key` is NULL for no key. */
void weir_emit(weir_out *out, uint32_t output, const weir_span *key, weir_span value,
               int64_t timestamp_ms, weir_span headers);

/* During `weir_init`: declares a named output; the first is output 1. */
void weir_add_output(const char *name);

/* Writes a line to the host's log, tagged with the stage's name. */
void weir_log(weir_plugin_types_level_t level, const char *message);

/* --- What a stage defines ------------------------------------------------------------- */

/* Configures the stage from its `config:` map, given as JSON text (`{}` when there is none).
 * Returns false after writing a message to `error`: the pipeline does not start. */
bool weir_init(weir_bytes config, weir_buf *error);

/* Processes one record, emitting zero or more records into `out`. Returns false after writing
 * a message to `error`: the record goes to the dead-letter output. */
bool weir_process(const weir_context *cx, const weir_record *record, weir_out *out,
                  weir_buf *error);

/* Optional: event time reached `watermark_ms`; `fired` holds the timers now due, in time
 * order. The SDK's default emits nothing. */
void weir_on_watermark(int64_t watermark_ms, const weir_plugin_types_timer_t *fired,
                       size_t fired_len, weir_out *out);

/* Keyed state and timers are the generated functions `weir_plugin_state_get`, `_set`,
 * `_delete`, `_scan_prefix` and `weir_plugin_timers_register`, `_cancel` (see gen/stage.h). */

#ifdef __cplusplus
}
#endif

#endif
