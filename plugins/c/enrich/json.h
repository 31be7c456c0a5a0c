/*
 * json.h: the JSON that `enrich` needs, in one pass that builds nothing.
 *
 * `json_scan_object` checks that a value is exactly one JSON object with the rules of the Rust
 * enrich's scan.rs (RFC 8259: strict UTF-8, `\u` surrogates in pairs, nesting up to 128, no
 * trailing data but whitespace), and hands each top-level member to a callback.
 */
#ifndef ENRICH_JSON_H
#define ENRICH_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "weir.h"

/* Why a value was refused, and where. */
typedef struct json_error {
    /* What was wrong, such as "expected `:`". */
    const char *what;
    /* Byte offset in the value. */
    size_t at;
} json_error;

/* Called after each top-level member with its raw key (between the quotes, escapes kept;
 * `escaped` says whether it holds a backslash) and the member's byte range in the text, from
 * the key's opening quote to the end of its value. */
typedef void json_member_fn(void *cx, const uint8_t *key, size_t key_len, bool escaped,
                            size_t start, size_t end);

/* Checks that `text` is exactly one JSON object, whitespace around it allowed, and counts its
 * members into `*members`. `on_member` (may be NULL) sees every top-level member; what it saw
 * counts only if the scan succeeds. */
bool json_scan_object(const uint8_t *text, size_t len, json_member_fn *on_member, void *cx,
                      size_t *members, json_error *error);

/* Appends "WHAT at byte N". */
void json_write_error(weir_buf *buf, const json_error *error);

/* Appends the UTF-8 text of a string's raw contents (between the quotes, as the scan accepted
 * them). Returns false, having appended part of it, at a `\u` surrogate outside a pair. */
bool json_unescape(const uint8_t *raw, size_t len, weir_buf *out);

#endif
