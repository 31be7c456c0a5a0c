/*
 * weir.c: the exports of the `stage` world, written once over a stage's `weir_init` and
 * `weir_process` (see weir.h), and the buffer helpers.
 *
 * Ownership follows the canonical ABI as the generated bindings implement it: an export owns
 * its arguments and frees them; what it returns is freed by the generated post-return
 * functions after the host has copied it out. The input batch's headers are moved into the
 * output batch rather than copied, so a record's header span stays valid in the output.
 */
#include <stdlib.h>

#include "weir.h"

/* The bindings reference a symbol that wit-bindgen's component-type object would define; the
 * build embeds the component type from wit/weir.wit instead (`wasm-component-ld
 * --component-type`), so nothing needs to pull that object in. */
void __component_type_object_force_link_stage(void) {}

/* Grows an array of `size`-byte items so that it holds `needed`; returns the new capacity. */
static void *grow(void *ptr, size_t *cap, size_t needed, size_t size) {
    if (needed <= *cap) return ptr;
    size_t next = *cap ? *cap * 2 : 16;
    if (next < needed) next = needed;
    ptr = realloc(ptr, next * size);
    if (!ptr) abort();
    *cap = next;
    return ptr;
}

void weir_buf_reserve(weir_buf *buf, size_t additional) {
    buf->ptr = grow(buf->ptr, &buf->cap, buf->len + additional, 1);
}

void weir_buf_free(weir_buf *buf) {
    free(buf->ptr);
    *buf = (weir_buf){0};
}

void weir_buf_i64(weir_buf *buf, int64_t n) {
    char digits[20];
    size_t i = sizeof digits;
    uint64_t magnitude = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;
    do {
        digits[--i] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (n < 0) weir_buf_byte(buf, '-');
    weir_buf_push(buf, digits + i, sizeof digits - i);
}

void weir_buf_json_string(weir_buf *buf, const uint8_t *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    weir_buf_byte(buf, '"');
    size_t plain = 0; /* start of the run of bytes copied as they are */
    for (size_t i = 0; i < len; i++) {
        uint8_t b = text[i];
        if (b >= 0x20 && b != '"' && b != '\\') continue;
        weir_buf_push(buf, text + plain, i - plain);
        plain = i + 1;
        char short_form = b == '"' ? '"' : b == '\\' ? '\\' : b == '\b' ? 'b' : b == '\f' ? 'f'
                        : b == '\n' ? 'n' : b == '\r' ? 'r' : b == '\t' ? 't' : 0;
        if (short_form) {
            char escape[2] = {'\\', short_form};
            weir_buf_push(buf, escape, 2);
        } else {
            char escape[6] = {'\\', 'u', '0', '0', hex[b >> 4], hex[b & 15]};
            weir_buf_push(buf, escape, 6);
        }
    }
    weir_buf_push(buf, text + plain, len - plain);
    weir_buf_byte(buf, '"');
}

weir_span weir_out_put(weir_out *out, const void *bytes, size_t len) {
    size_t mark = out->data.len;
    weir_buf_push(&out->data, bytes, len);
    return weir_out_since(out, mark);
}

const weir_span *weir_out_key(weir_out *out, const weir_record *record) {
    if (!record->has_key) return NULL;
    out->key = weir_out_put(out, record->key.ptr, record->key.len);
    return &out->key;
}

uint32_t weir_out_header(weir_out *out, const char *name, const void *value, size_t len) {
    weir_plugin_types_header_t header;
    stage_string_dup(&header.name, name);
    header.value = (stage_list_u8_t){NULL, len};
    if (len) {
        header.value.ptr = malloc(len);
        if (!header.value.ptr) abort();
        memcpy(header.value.ptr, value, len);
    }
    out->headers.ptr = grow(out->headers.ptr, &out->headers_cap, out->headers.len + 1,
                            sizeof header);
    out->headers.ptr[out->headers.len] = header;
    return (uint32_t)out->headers.len++;
}

void weir_emit(weir_out *out, uint32_t output, const weir_span *key, weir_span value,
               int64_t timestamp_ms, weir_span headers) {
    out->records.ptr = grow(out->records.ptr, &out->records_cap, out->records.len + 1,
                            sizeof *out->records.ptr);
    out->records.ptr[out->records.len++] = (weir_plugin_types_output_record_t){
        .output = output,
        .derived_from = out->current,
        .key = {key != NULL, key ? *key : (weir_span){0, 0}},
        .value = value,
        .timestamp_ms = timestamp_ms,
        .headers = headers,
    };
}

/* The named outputs declared during `weir_init`. */
static stage_list_string_t outputs;
static size_t outputs_cap;

void weir_add_output(const char *name) {
    outputs.ptr = grow(outputs.ptr, &outputs_cap, outputs.len + 1, sizeof *outputs.ptr);
    stage_string_dup(&outputs.ptr[outputs.len++], name);
}

void weir_log(weir_plugin_types_level_t level, const char *message) {
    stage_string_t text;
    stage_string_set(&text, message);
    weir_plugin_host_log(level, &text);
}

__attribute__((weak)) void weir_on_watermark(int64_t watermark_ms,
                                             const weir_plugin_types_timer_t *fired,
                                             size_t fired_len, weir_out *out) {
    (void)watermark_ms, (void)fired, (void)fired_len, (void)out;
}

/* A message the host can take: the stage's text, or `fallback` when it wrote none. */
static stage_string_t message(weir_buf *text, const char *fallback) {
    stage_string_t s;
    if (text->len) {
        s = (stage_string_t){text->ptr, text->len};
        *text = (weir_buf){0};
    } else {
        weir_buf_free(text);
        stage_string_dup(&s, fallback);
    }
    return s;
}

/* Hands the output to the host. The post-return functions free only non-empty lists, so
 * empty ones are freed here. */
static void finish(weir_out *out, exports_weir_plugin_transform_output_batch_t *ret) {
    if (!out->records.len) free(out->records.ptr), out->records.ptr = NULL;
    if (!out->data.len) weir_buf_free(&out->data);
    if (!out->headers.len) free(out->headers.ptr), out->headers.ptr = NULL;
    if (!out->errors.len) free(out->errors.ptr), out->errors.ptr = NULL;
    ret->records = out->records;
    ret->data = (stage_list_u8_t){out->data.ptr, out->data.len};
    ret->headers = out->headers;
    ret->errors = out->errors;
}

bool exports_weir_plugin_transform_init(stage_string_t *config,
                                        exports_weir_plugin_transform_stage_info_t *ret,
                                        stage_string_t *err) {
    stage_list_string_free(&outputs);
    outputs = (stage_list_string_t){0};
    outputs_cap = 0;
    weir_buf error = {0};
    bool ok = weir_init((weir_bytes){config->ptr, config->len}, &error);
    stage_string_free(config);
    if (!ok) {
        *err = message(&error, "the stage refused its configuration");
        return false;
    }
    weir_buf_free(&error);
    ret->outputs = outputs; /* the host frees the names */
    outputs = (stage_list_string_t){0};
    outputs_cap = 0;
    return true;
}

void exports_weir_plugin_transform_process(exports_weir_plugin_transform_batch_t *batch,
                                           exports_weir_plugin_transform_output_batch_t *ret) {
    weir_out out = {0};
    out.headers = batch->headers;
    out.headers_cap = batch->headers.len;
    batch->headers = (weir_plugin_types_list_header_t){0};
    size_t n = batch->records.len;
    const uint8_t *data = batch->data.ptr;
    size_t data_len = batch->data.len;
    weir_buf_reserve(&out.data, data_len + data_len / 2);
    out.records.ptr = grow(NULL, &out.records_cap, n, sizeof *out.records.ptr);

    weir_context cx = {{batch->topic.ptr, batch->topic.len},
                       batch->partition,
                       batch->processing_time_ms};
    weir_buf error = {0};
    for (size_t i = 0; i < n; i++) {
        const weir_plugin_types_input_record_t *r = &batch->records.ptr[i];
        /* The host builds valid spans; a bad one is a host bug, so trap rather than read
         * out of bounds. */
        if (r->value.start > data_len || r->value.len > data_len - r->value.start ||
            (r->key.is_some && (r->key.val.start > data_len ||
                                r->key.val.len > data_len - r->key.val.start)))
            abort();
        weir_record record = {
            .index = (uint32_t)i,
            .has_key = r->key.is_some,
            .key = r->key.is_some ? (weir_bytes){data + r->key.val.start, r->key.val.len}
                                  : (weir_bytes){NULL, 0},
            .value = {data + r->value.start, r->value.len},
            .timestamp_ms = r->timestamp_ms,
            .offset = r->offset,
            .headers = r->headers,
        };
        out.current = (stage_option_u32_t){true, (uint32_t)i};
        if (weir_process(&cx, &record, &out, &error)) {
            error.len = 0;
            continue;
        }
        out.errors.ptr = grow(out.errors.ptr, &out.errors_cap, out.errors.len + 1,
                              sizeof *out.errors.ptr);
        out.errors.ptr[out.errors.len++] = (weir_plugin_types_record_error_t){
            (uint32_t)i, message(&error, "the stage refused the record")};
    }
    weir_buf_free(&error);
    exports_weir_plugin_transform_batch_free(batch);
    finish(&out, ret);
}

void exports_weir_plugin_transform_on_watermark(int64_t watermark_ms,
                                                exports_weir_plugin_transform_list_timer_t *fired,
                                                exports_weir_plugin_transform_output_batch_t *ret) {
    weir_out out = {0};
    out.current = (stage_option_u32_t){false, 0};
    weir_on_watermark(watermark_ms, fired->ptr, fired->len, &out);
    exports_weir_plugin_transform_list_timer_free(fired);
    finish(&out, ret);
}
