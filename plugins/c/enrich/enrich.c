/*
 * enrich.c: the `enrich` stage in C, byte for byte the Rust plugins/enrich.
 *
 * Each value must be exactly one JSON object; the stage adds `kafka_topic`, `kafka_partition`,
 * `kafka_offset`, `kafka_timestamp` (the record's event time) and `ingestion_timestamp` (the
 * batch's processing time). Anything else is a per-record error, sent to the dead letters.
 *
 * The common case, an object with none of those fields yet, costs one validating pass over the
 * value (json_scan_object) and a copy: the fields are written before its closing brace. An
 * object that already has one of the fields keeps the text of its other members and gets the
 * fields written after them, so the output never holds a key twice.
 */
#include "json.h"
#include "weir.h"

/* The fields the stage adds, in the order it writes them. */
static const char *const FIELDS[] = {
    "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "ingestion_timestamp",
};
enum { FIELD_COUNT = sizeof FIELDS / sizeof *FIELDS };

/* The last topic seen and its JSON form: every record of a batch shares them. */
static weir_buf topic, topic_json;

/* Unescaped keys, reused from call to call. */
static weir_buf scratch;

/* Whether a raw key names one of FIELDS. A key written with escapes counts after unescaping,
 * so `"kafka\u005ftopic"` is `kafka_topic`. */
static bool is_field(const uint8_t *key, size_t len, bool escaped) {
    if (escaped) {
        scratch.len = 0;
        if (!json_unescape(key, len, &scratch)) return false;
        key = scratch.ptr, len = scratch.len;
    }
    for (size_t i = 0; i < FIELD_COUNT; i++)
        if (strlen(FIELDS[i]) == len && memcmp(key, FIELDS[i], len) == 0) return true;
    return false;
}

/* json_member_fn: sets `*(bool *)found` if the member is one of FIELDS. */
static void note_field(void *found, const uint8_t *key, size_t len, bool escaped, size_t start,
                       size_t end) {
    (void)start, (void)end;
    if (!*(bool *)found) *(bool *)found = is_field(key, len, escaped);
}

/* What `copy_others` needs: the value and where to copy to. */
typedef struct copy_job {
    const uint8_t *value;
    weir_buf *out;
} copy_job;

/* json_member_fn: copies a member that is not one of FIELDS, as it is written, and a comma. */
static void copy_others(void *job, const uint8_t *key, size_t len, bool escaped, size_t start,
                        size_t end) {
    copy_job *copy = job;
    if (is_field(key, len, escaped)) return;
    weir_buf_push(copy->out, copy->value + start, end - start);
    weir_buf_byte(copy->out, ',');
}

/* The smallest key of an object: the one a sorted map lists first. */
typedef struct smallest_key {
    weir_buf key;
    bool seen;
} smallest_key;

/* json_member_fn: keeps the smallest key seen in `*(smallest_key *)smallest`. */
static void note_smallest(void *smallest, const uint8_t *key, size_t len, bool escaped,
                          size_t start, size_t end) {
    (void)start, (void)end;
    smallest_key *best = smallest;
    scratch.len = 0;
    if (escaped)
        json_unescape(key, len, &scratch); /* cannot fail: the scan checked the escapes */
    else
        weir_buf_push(&scratch, key, len);
    size_t n = scratch.len < best->key.len ? scratch.len : best->key.len;
    int order = n ? memcmp(scratch.ptr, best->key.ptr, n) : 0;
    if (!best->seen || order < 0 || (order == 0 && scratch.len < best->key.len)) {
        best->key.len = 0;
        weir_buf_push(&best->key, scratch.ptr, scratch.len);
        best->seen = true;
    }
}

/* The config must be an empty JSON object. With keys, the error names the one the Rust stage
 * names: the smallest, as its sorted map lists them. */
bool weir_init(weir_bytes config, weir_buf *error) {
    smallest_key first = {0};
    size_t members;
    json_error why;
    bool ok = json_scan_object(config.ptr, config.len, note_smallest, &first, &members, &why);
    if (!ok) {
        weir_buf_str(error, "config is not a JSON object: ");
        json_write_error(error, &why);
    } else if (members) {
        ok = false;
        weir_buf_str(error, "enrich takes no settings, found `");
        weir_buf_push(error, first.key.ptr, first.key.len);
        weir_buf_str(error, "`");
    }
    weir_buf_free(&first.key);
    return ok;
}

/* Appends `"kafka_topic":…,…,"ingestion_timestamp":N}`. */
static void write_fields(weir_buf *buf, const weir_context *cx, const weir_record *record) {
    weir_buf_str(buf, "\"kafka_topic\":");
    weir_buf_push(buf, topic_json.ptr, topic_json.len);
    weir_buf_str(buf, ",\"kafka_partition\":");
    weir_buf_i64(buf, cx->partition);
    weir_buf_str(buf, ",\"kafka_offset\":");
    weir_buf_i64(buf, record->offset);
    weir_buf_str(buf, ",\"kafka_timestamp\":");
    weir_buf_i64(buf, record->timestamp_ms);
    weir_buf_str(buf, ",\"ingestion_timestamp\":");
    weir_buf_i64(buf, cx->processing_time_ms);
    weir_buf_byte(buf, '}');
}

bool weir_process(const weir_context *cx, const weir_record *record, weir_out *out,
                  weir_buf *error) {
    if (topic_json.len == 0 || topic.len != cx->topic.len ||
        memcmp(topic.ptr, cx->topic.ptr, topic.len) != 0) {
        topic.len = topic_json.len = 0;
        weir_buf_push(&topic, cx->topic.ptr, cx->topic.len);
        weir_buf_json_string(&topic_json, cx->topic.ptr, cx->topic.len);
    }
    const uint8_t *value = record->value.ptr;
    size_t len = record->value.len, members;
    bool has_field = false;
    json_error why;
    if (!json_scan_object(value, len, note_field, &has_field, &members, &why)) {
        weir_buf_str(error, "value is not a JSON object: ");
        json_write_error(error, &why);
        return false;
    }

    const weir_span *key = weir_out_key(out, record);
    size_t mark = out->data.len;
    weir_buf *buf = &out->data;
    if (has_field) {
        /* A second pass over what the first accepted: it cannot fail. */
        weir_buf_byte(buf, '{');
        copy_job copy = {value, buf};
        json_scan_object(value, len, copy_others, &copy, &members, &why);
    } else {
        while (len && (value[len - 1] == ' ' || value[len - 1] == '\t' ||
                       value[len - 1] == '\n' || value[len - 1] == '\r'))
            len--;
        weir_buf_reserve(buf, len + topic_json.len + 128);
        weir_buf_push(buf, value, len - 1); /* all but the closing brace */
        if (members) weir_buf_byte(buf, ',');
    }
    write_fields(buf, cx, record);
    weir_emit(out, 0, key, weir_out_since(out, mark), record->timestamp_ms, record->headers);
    return true;
}
