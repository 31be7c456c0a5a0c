/*
 * json.c: a validating scan of one JSON object in a single pass. See json.h.
 *
 * The scan follows plugins/enrich/src/scan.rs rule for rule and reports the same errors at
 * the same bytes. Where scan.rs checks UTF-8 for the whole value first, this scan checks it
 * inside strings only (anywhere else a byte above 0x7F is a grammar error anyway) and, on
 * failure, looks for the first invalid UTF-8 over the whole value, so that it reports what
 * scan.rs reports.
 */
#include <string.h>

#include "json.h"

typedef struct scanner {
    const uint8_t *s;
    size_t len;
    size_t pos;
    /* Set, with `pos` at the offending byte, when the scan fails. */
    const char *error;
} scanner;

/* How deep arrays and objects may nest, the top-level object included. */
enum { MAX_DEPTH = 128 };

static bool fail(scanner *sc, const char *what) {
    sc->error = what;
    return false;
}

static inline int peek(const scanner *sc) {
    return sc->pos < sc->len ? sc->s[sc->pos] : -1;
}

static inline bool is_ws(uint8_t b) {
    return b == ' ' || b == '\t' || b == '\n' || b == '\r';
}

static inline void skip_ws(scanner *sc) {
    while (sc->pos < sc->len && is_ws(sc->s[sc->pos])) sc->pos++;
}

static inline bool is_digit(int c) {
    return c >= '0' && c <= '9';
}

static inline int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Length of the well-formed UTF-8 sequence (Unicode 15, table 3-7) that starts with a byte
 * above 0x7F at `p`, or 0. */
static size_t utf8_sequence(const uint8_t *p, size_t left) {
    uint8_t b = p[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (b >= 0xC2 && b <= 0xDF) {
        n = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (left < n || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* Where the first invalid UTF-8 sequence starts (Rust's `valid_up_to`), or `len`. */
static size_t utf8_valid_up_to(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_sequence(s + i, len - i);
        if (!n) return i;
        i += n;
    }
    return len;
}

/* Bytes that end the fast part of a string scan: `"`, `\`, control characters and non-ASCII
 * (checked as UTF-8). */
static const bool STRING_STOP[256] = {
    [0x00 ... 0x1F] = true, ['"'] = true, ['\\'] = true, [0x80 ... 0xFF] = true,
};

/* Marks (top bit of the byte) the bytes of `word` that are in STRING_STOP; the lowest mark
 * is exact, marks above it may be false alarms, which is all the scan needs. */
static inline uint64_t stop_bytes(uint64_t word) {
    const uint64_t ones = 0x0101010101010101u, tops = 0x8080808080808080u;
    uint64_t quote = word ^ (ones * '"'), backslash = word ^ (ones * '\\');
    uint64_t control = word - ones * 0x20;
    return (((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | (control & ~word) |
            word) &
           tops;
}

static bool hex4(scanner *sc, uint32_t *unit) {
    *unit = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(peek(sc));
        if (h < 0) return fail(sc, "invalid \\u escape");
        *unit = *unit << 4 | (uint32_t)h;
        sc->pos++;
    }
    return true;
}

/* An escape whose backslash is just before `pos`. A `\u` surrogate must be a leading one
 * followed at once by `\u` and a trailing one, so that the string is Unicode text. */
static bool escape(scanner *sc) {
    switch (peek(sc)) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        sc->pos++;
        return true;
    case 'u':
        break;
    default:
        return fail(sc, "invalid escape");
    }
    sc->pos++;
    uint32_t unit, trailing = 0;
    if (!hex4(sc, &unit)) return false;
    if (unit >= 0xDC00 && unit <= 0xDFFF) return fail(sc, "lone trailing surrogate in \\u escape");
    if (unit < 0xD800 || unit > 0xDBFF) return true;
    if (sc->len - sc->pos >= 2 && sc->s[sc->pos] == '\\' && sc->s[sc->pos + 1] == 'u') {
        sc->pos += 2;
        if (!hex4(sc, &trailing)) return false;
    }
    if (trailing < 0xDC00 || trailing > 0xDFFF)
        return fail(sc, "lone leading surrogate in \\u escape");
    return true;
}

/* Skips the string whose opening quote is at `pos`. */
static bool string(scanner *sc, bool *escaped) {
    const uint8_t *s = sc->s;
    size_t len = sc->len, pos = sc->pos + 1;
    for (;;) {
        while (len - pos >= 8) {
            uint64_t word;
            memcpy(&word, s + pos, 8);
            uint64_t stops = stop_bytes(word);
            if (stops) {
                pos += (size_t)__builtin_ctzll(stops) / 8;
                break;
            }
            pos += 8;
        }
        while (pos < len && !STRING_STOP[s[pos]]) pos++;
        if (pos == len) {
            sc->pos = len;
            return fail(sc, "unterminated string");
        }
        uint8_t b = s[pos];
        if (b == '"') {
            sc->pos = pos + 1;
            return true;
        }
        if (b == '\\') {
            *escaped = true;
            sc->pos = pos + 1;
            if (!escape(sc)) return false;
            pos = sc->pos;
        } else if (b < 0x20) {
            sc->pos = pos;
            return fail(sc, "control character in string");
        } else {
            size_t n = utf8_sequence(s + pos, len - pos);
            if (!n) {
                sc->pos = pos;
                return fail(sc, "invalid UTF-8");
            }
            pos += n;
        }
    }
}

static size_t digits(scanner *sc) {
    size_t start = sc->pos;
    while (is_digit(peek(sc))) sc->pos++;
    return sc->pos - start;
}

static bool number(scanner *sc) {
    if (peek(sc) == '-') sc->pos++;
    int c = peek(sc);
    if (c == '0') {
        sc->pos++;
    } else if (c >= '1' && c <= '9') {
        digits(sc);
    } else {
        return fail(sc, "invalid number");
    }
    if (peek(sc) == '.') {
        sc->pos++;
        if (digits(sc) == 0) return fail(sc, "invalid number");
    }
    if (peek(sc) == 'e' || peek(sc) == 'E') {
        sc->pos++;
        if (peek(sc) == '+' || peek(sc) == '-') sc->pos++;
        if (digits(sc) == 0) return fail(sc, "invalid number");
    }
    return true;
}

static bool literal(scanner *sc, const char *word, size_t n) {
    if (sc->len - sc->pos < n || memcmp(sc->s + sc->pos, word, n) != 0)
        return fail(sc, "invalid literal");
    sc->pos += n;
    return true;
}

static bool object(scanner *sc, unsigned depth, json_member_fn *on_member, void *cx,
                   size_t *members);
static bool array(scanner *sc, unsigned depth);

static bool value(scanner *sc, unsigned depth) {
    bool escaped;
    size_t members;
    switch (peek(sc)) {
    case '"': return string(sc, &escaped);
    case '{': return object(sc, depth + 1, NULL, NULL, &members);
    case '[': return array(sc, depth + 1);
    case 't': return literal(sc, "true", 4);
    case 'f': return literal(sc, "false", 5);
    case 'n': return literal(sc, "null", 4);
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return number(sc);
    case -1: return fail(sc, "unexpected end");
    default: return fail(sc, "expected a value");
    }
}

static bool array(scanner *sc, unsigned depth) {
    if (depth > MAX_DEPTH) return fail(sc, "nested too deeply");
    sc->pos++;
    skip_ws(sc);
    if (peek(sc) == ']') {
        sc->pos++;
        return true;
    }
    for (;;) {
        skip_ws(sc);
        if (!value(sc, depth)) return false;
        skip_ws(sc);
        switch (peek(sc)) {
        case ',': sc->pos++; break;
        case ']': sc->pos++; return true;
        default: return fail(sc, "expected `,` or `]`");
        }
    }
}

/* Scans the object whose `{` is at `pos`, calling `on_member` (if any) after each member. */
static bool object(scanner *sc, unsigned depth, json_member_fn *on_member, void *cx,
                   size_t *members) {
    *members = 0;
    if (depth > MAX_DEPTH) return fail(sc, "nested too deeply");
    sc->pos++;
    skip_ws(sc);
    if (peek(sc) == '}') {
        sc->pos++;
        return true;
    }
    for (;;) {
        skip_ws(sc);
        if (peek(sc) != '"') return fail(sc, "expected a key");
        size_t start = sc->pos;
        bool escaped = false;
        if (!string(sc, &escaped)) return false;
        size_t key_end = sc->pos - 1;
        skip_ws(sc);
        if (peek(sc) != ':') return fail(sc, "expected `:`");
        sc->pos++;
        skip_ws(sc);
        if (!value(sc, depth)) return false;
        if (on_member)
            on_member(cx, sc->s + start + 1, key_end - start - 1, escaped, start, sc->pos);
        ++*members;
        skip_ws(sc);
        switch (peek(sc)) {
        case ',': sc->pos++; break;
        case '}': sc->pos++; return true;
        default: return fail(sc, "expected `,` or `}`");
        }
    }
}

bool json_scan_object(const uint8_t *text, size_t len, json_member_fn *on_member, void *cx,
                      size_t *members, json_error *error) {
    scanner sc = {text, len, 0, NULL};
    skip_ws(&sc);
    bool ok = peek(&sc) == '{' ? object(&sc, 1, on_member, cx, members)
                               : fail(&sc, "expected `{`");
    if (ok) {
        skip_ws(&sc);
        if (sc.pos == len) return true;
        fail(&sc, "trailing characters");
    }
    size_t invalid = utf8_valid_up_to(text, len);
    *error = invalid < len ? (json_error){"invalid UTF-8", invalid} : (json_error){sc.error, sc.pos};
    return false;
}

void json_write_error(weir_buf *buf, const json_error *error) {
    weir_buf_str(buf, error->what);
    weir_buf_str(buf, " at byte ");
    weir_buf_i64(buf, (int64_t)error->at);
}

static void push_utf8(weir_buf *out, uint32_t c) {
    uint8_t b[4];
    size_t n;
    if (c < 0x80) {
        b[0] = (uint8_t)c, n = 1;
    } else if (c < 0x800) {
        b[0] = (uint8_t)(0xC0 | c >> 6), b[1] = (uint8_t)(0x80 | (c & 0x3F)), n = 2;
    } else if (c < 0x10000) {
        b[0] = (uint8_t)(0xE0 | c >> 12), b[1] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        b[2] = (uint8_t)(0x80 | (c & 0x3F)), n = 3;
    } else {
        b[0] = (uint8_t)(0xF0 | c >> 18), b[1] = (uint8_t)(0x80 | (c >> 12 & 0x3F));
        b[2] = (uint8_t)(0x80 | (c >> 6 & 0x3F)), b[3] = (uint8_t)(0x80 | (c & 0x3F)), n = 4;
    }
    weir_buf_push(out, b, n);
}

static uint32_t hex4_at(const uint8_t *p) {
    return (uint32_t)(hex_value(p[0]) << 12 | hex_value(p[1]) << 8 | hex_value(p[2]) << 4 |
                      hex_value(p[3]));
}

bool json_unescape(const uint8_t *raw, size_t len, weir_buf *out) {
    size_t i = 0;
    while (i < len) {
        size_t plain = i;
        while (i < len && raw[i] != '\\') i++;
        weir_buf_push(out, raw + plain, i - plain);
        if (i == len) break;
        uint8_t c = raw[i + 1];
        i += 2;
        switch (c) {
        case 'b': weir_buf_byte(out, '\b'); continue;
        case 'f': weir_buf_byte(out, '\f'); continue;
        case 'n': weir_buf_byte(out, '\n'); continue;
        case 'r': weir_buf_byte(out, '\r'); continue;
        case 't': weir_buf_byte(out, '\t'); continue;
        case 'u': break;
        default: weir_buf_byte(out, c); continue; /* `"`, `\`, `/` */
        }
        uint32_t unit = hex4_at(raw + i);
        i += 4;
        if (unit >= 0xDC00 && unit <= 0xDFFF) return false;
        if (unit >= 0xD800 && unit <= 0xDBFF) {
            if (len - i < 6 || raw[i] != '\\' || raw[i + 1] != 'u') return false;
            uint32_t trailing = hex4_at(raw + i + 2);
            if (trailing < 0xDC00 || trailing > 0xDFFF) return false;
            unit = 0x10000 + ((unit - 0xD800) << 10) + (trailing - 0xDC00);
            i += 6;
        }
        push_utf8(out, unit);
    }
    return true;
}
