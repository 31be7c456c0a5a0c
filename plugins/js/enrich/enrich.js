// `enrich`, in JavaScript: adds where a record came from and when it was ingested to a JSON
// object. Behaves as the Rust plugin (plugins/enrich) does, byte for byte on the common path.
//
// Each value must be exactly one JSON object (RFC 8259); the stage adds `kafka_topic`,
// `kafka_partition`, `kafka_offset`, `kafka_timestamp` (the record's event time) and
// `ingestion_timestamp` (the batch's processing time). Anything else is a per-record error.
//
// The common case, an object without any of those fields, is handled by writing the fields
// before the value's closing brace; the value's bytes are copied, never re-serialised. An object
// that has one of them keeps the text of its other members as it was, then gets the fields, so
// numbers such as 12345678901234567890 or 1.10 come out as they went in.

import { exportStage } from '../sdk/weir.js';

/** The fields the stage adds, in the order it writes them. */
export const FIELDS = [
  'kafka_topic',
  'kafka_partition',
  'kafka_offset',
  'kafka_timestamp',
  'ingestion_timestamp',
];

/** How deep arrays and objects may nest, as in serde_json (the top-level object is level 1). */
const MAX_DEPTH = 128;

// Strict UTF-8; `ignoreBOM` keeps a byte order mark in the text, so that JSON.parse refuses it.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A `\u` escape of a UTF-16 surrogate: only then can an escape be a lone surrogate. */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;
/** Every escape in a text, in order (so that `\\u` is read as `\\` then `u`). */
const ESCAPE = /\\(?:u([0-9a-fA-F]{4})|[^u])/g;

/**
 * Parses `text` as exactly one JSON object, as strictly as serde_json: JSON.parse refuses
 * everything RFC 8259 does except escapes of lone surrogates and nesting beyond 128 levels,
 * which are checked here. Throws a string saying what is wrong.
 */
export function parseObject(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw error.message;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw 'expected `{`';
  }
  // 129 levels take at least 129 opening and 129 closing brackets.
  if (text.length > 2 * MAX_DEPTH + 1 && nestedTooDeeply(value, 1)) {
    throw 'nested too deeply';
  }
  if (SURROGATE_ESCAPE.test(text) && hasLoneSurrogate(text)) {
    throw 'lone surrogate in \\u escape';
  }
  return value;
}

/** Whether a container at `depth`, or one inside it, is deeper than `MAX_DEPTH`. */
function nestedTooDeeply(container, depth) {
  if (depth > MAX_DEPTH) return true;
  const items = Array.isArray(container) ? container : Object.values(container);
  for (const item of items) {
    if (item !== null && typeof item === 'object' && nestedTooDeeply(item, depth + 1)) {
      return true;
    }
  }
  return false;
}

/** Whether a `\u` escape in `text` (already valid JSON) is a surrogate without its pair. */
function hasLoneSurrogate(text) {
  // End of the last escape when it was a leading surrogate, waiting for its trailing one.
  let pending = -1;
  for (const escape of text.matchAll(ESCAPE)) {
    const unit = escape[1] === undefined ? -1 : parseInt(escape[1], 16);
    const trailing = unit >= 0xdc00 && unit <= 0xdfff;
    if (pending >= 0) {
      if (escape.index !== pending || !trailing) return true;
      pending = -1;
    } else if (unit >= 0xd800 && unit <= 0xdbff) {
      pending = escape.index + 6;
    } else if (trailing) {
      return true;
    }
  }
  return pending >= 0;
}

/** JSON whitespace, as bytes. */
function isSpace(byte) {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09;
}

/** Lesser of two strings in code point order (the order of their UTF-8 bytes, as in Rust). */
function byCodePoint(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
  }
  return x.length - y.length;
}

/**
 * The top-level members of `text`, which must be a valid JSON object: `[key, member]`, `key`
 * unescaped and `member` the text from the key's opening quote to the end of its value.
 */
export function members(text) {
  const found = [];
  let i = skipSpace(text, text.indexOf('{') + 1);
  if (text[i] === '}') return found;
  for (;;) {
    i = skipSpace(text, i);
    const start = i;
    i = skipString(text, i);
    const rawKey = text.slice(start, i);
    const key = rawKey.includes('\\') ? JSON.parse(rawKey) : rawKey.slice(1, -1);
    i = skipValue(text, skipSpace(text, skipSpace(text, i) + 1));
    found.push([key, text.slice(start, i)]);
    i = skipSpace(text, i);
    if (text[i] === '}') return found;
    i += 1;
  }
}

function skipSpace(text, i) {
  for (;;) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i;
    i += 1;
  }
}

/** Index after the string whose opening quote is at `i`. */
function skipString(text, i) {
  for (i += 1; ; i += 1) {
    const c = text.charCodeAt(i);
    if (c === 0x22) return i + 1;
    if (c === 0x5c) i += 1;
  }
}

/** Index after the value that starts at `i`. */
function skipValue(text, i) {
  const first = text[i];
  if (first === '"') return skipString(text, i);
  if (first !== '{' && first !== '[') {
    while (i < text.length && !',}] \n\r\t'.includes(text[i])) i += 1;
    return i;
  }
  let depth = 0;
  for (;;) {
    const c = text[i];
    if (c === '"') {
      i = skipString(text, i);
      continue;
    }
    if (c === '{' || c === '[') depth += 1;
    else if ((c === '}' || c === ']') && --depth === 0) return i + 1;
    i += 1;
  }
}

/** The stage. It keeps the text of the added fields that every record of a batch shares. */
class Enrich {
  constructor() {
    /** The batch context the texts below were made for. */
    this.cx = undefined;
    /** From `"kafka_topic"` to the `:` before the offset. */
    this.head = '';
    /** From `,"ingestion_timestamp"` to the closing brace. */
    this.tail = '';
  }

  process(cx, record, out) {
    if (this.cx !== cx) {
      this.cx = cx;
      this.head = `"kafka_topic":${JSON.stringify(cx.topic)},"kafka_partition":${cx.partition},"kafka_offset":`;
      this.tail = `,"ingestion_timestamp":${cx.processingTimeMs}}`;
    }
    let object;
    let text;
    try {
      text = decoder.decode(record.value);
      object = parseObject(text);
    } catch (detail) {
      const why = detail instanceof TypeError ? 'invalid UTF-8' : detail;
      throw `value is not a JSON object: ${why}`;
    }
    // Spelt out rather than a loop over FIELDS: the engine interprets this code, and calls cost.
    if (
      'kafka_topic' in object ||
      'kafka_partition' in object ||
      'kafka_offset' in object ||
      'kafka_timestamp' in object ||
      'ingestion_timestamp' in object
    ) {
      out.emit(record.key, this.rebuild(text, record), record.timestampMs, record.headers);
      return;
    }
    const bytes = record.value;
    let end = bytes.length;
    while (bytes[end - 1] !== 0x7d) end -= 1;
    // The object is empty when `{` comes before the closing brace.
    let last = end - 2;
    while (isSpace(bytes[last])) last -= 1;
    const fields = `${bytes[last] === 0x7b ? '' : ','}${this.head}${record.offset},"kafka_timestamp":${record.timestampMs}${this.tail}`;
    out.emit(record.key, [bytes.subarray(0, end - 1), fields], record.timestampMs, record.headers);
  }

  /**
   * The slow path: the text of the object's other members as it was written, then the fields.
   * The output is the Rust plugin's, byte for byte.
   */
  rebuild(text, record) {
    let rebuilt = '{';
    for (const [key, member] of members(text)) {
      if (!FIELDS.includes(key)) rebuilt += `${member},`;
    }
    return `${rebuilt}${this.head}${record.offset},"kafka_timestamp":${record.timestampMs}${this.tail}`;
  }
}

/** Refuses any setting: the stage has none. */
function init(config) {
  let settings;
  try {
    settings = parseObject(config);
  } catch (detail) {
    throw `config is not a JSON object: ${detail}`;
  }
  // The least key, as the Rust plugin's sorted map reports it.
  const keys = Object.keys(settings).sort(byCodePoint);
  if (keys.length > 0) throw `enrich takes no settings, found \`${keys[0]}\``;
  return new Enrich();
}

/** The `weir:plugin/transform` export. */
export const transform = exportStage(init);
