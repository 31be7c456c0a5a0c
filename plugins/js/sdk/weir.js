// Write Weir transformation stages in plain JavaScript.
//
// A stage module exports `transform = exportStage(init)`; `componentize.mjs` turns it into a
// WebAssembly component of the `weir:plugin/stage` world (wit/weir.wit). The stage's logic sees
// one record at a time and writes through an `Emitter`, which lays the output out in columns as
// the WIT `output-batch` wants: one byte buffer that every record points into with spans.
//
// The same module runs under Node, so a stage's logic is tested natively (see enrich/*.test.js).

const encoder = new TextEncoder();

/** Headers of a record that has none, shared so that such records cost no allocation. */
const NO_HEADERS = Object.freeze([]);

/**
 * Collects what a stage emits, in the columnar layout the host receives. Its buffer grows by
 * doubling, so emitting costs no allocation per record once it is large enough.
 */
export class Emitter {
  /** @param {number} capacity bytes to reserve up front */
  constructor(capacity = 1 << 16) {
    /** Keys and values of all emitted records; only the first `length` bytes are used. */
    this.data = new Uint8Array(Math.max(capacity, 64));
    /** Bytes of `data` in use. */
    this.length = 0;
    /** The emitted records (WIT `output-record`). */
    this.records = [];
    /** Headers of all emitted records (WIT `header`). */
    this.headers = [];
    /** Records that failed (WIT `record-error`). */
    this.errors = [];
    /** Index of the input record being processed, stamped on every record emitted meanwhile. */
    this.currentInput = undefined;
  }

  /** Makes room for `n` more bytes. */
  reserve(n) {
    const needed = this.length + n;
    if (needed <= this.data.length) return;
    const grown = new Uint8Array(Math.max(needed, this.data.length * 2));
    grown.set(this.data.subarray(0, this.length));
    this.data = grown;
  }

  /** Appends `part` (bytes, or a string written as UTF-8) to the buffer. */
  write(part) {
    if (typeof part === 'string') {
      // A UTF-16 code unit never takes more than three bytes of UTF-8.
      this.reserve(part.length * 3);
      this.length += encoder.encodeInto(part, this.data.subarray(this.length)).written;
    } else {
      this.reserve(part.length);
      this.data.set(part, this.length);
      this.length += part.length;
    }
  }

  /** Forgets everything emitted so far, keeping the buffer for the next call. */
  clear() {
    this.length = 0;
    this.records = [];
    this.headers = [];
    this.errors = [];
    this.currentInput = undefined;
  }

  /**
   * Emits a record.
   * @param {Uint8Array | undefined} key the key, or `undefined` for none
   * @param {Uint8Array | string | Array<Uint8Array | string>} value the value; an array is
   *   written part after part, which saves joining the parts first
   * @param {bigint} timestampMs event time, ms since the Unix epoch
   * @param {Array<{name: string, value: Uint8Array}>} headers the record's headers
   * @param {number} output 0 for the default output, `n` for the n-th of the stage's `outputs`
   */
  emit(key, value, timestampMs, headers = NO_HEADERS, output = 0) {
    let keySpan;
    if (key !== undefined) {
      const start = this.length;
      this.write(key);
      keySpan = { start, len: this.length - start };
    }
    const start = this.length;
    // Not `instanceof Uint8Array`: the bindings make the batch's bytes in another realm.
    if (typeof value === 'string' || ArrayBuffer.isView(value)) {
      this.write(value);
    } else {
      for (let i = 0; i < value.length; i++) this.write(value[i]);
    }
    const valueSpan = { start, len: this.length - start };
    const firstHeader = this.headers.length;
    for (let i = 0; i < headers.length; i++) this.headers.push(headers[i]);
    this.records.push({
      output,
      derivedFrom: this.currentInput,
      key: keySpan,
      value: valueSpan,
      timestampMs,
      headers: { start: firstHeader, len: headers.length },
    });
  }

  /** The WIT `output-batch` of everything emitted; its `data` is valid until `clear()`. */
  finish() {
    return {
      records: this.records,
      data: this.data.subarray(0, this.length),
      headers: this.headers,
      errors: this.errors,
    };
  }
}

/** The message of something thrown: an `Error`'s message, or the value as a string. */
export function messageOf(thrown) {
  return thrown instanceof Error ? thrown.message : String(thrown);
}

/**
 * Builds the `weir:plugin/transform` export from a stage's `init`.
 *
 * `init(config)` gets the stage's `config:` map as JSON text (`{}` when there is none) and
 * returns the stage, an object with:
 * - `process(cx, record, out)`: handles one record, emitting into `out` (an `Emitter`).
 *   `cx` is `{topic, partition, processingTimeMs}`, shared by the batch's records; `record` is
 *   `{index, key, value, timestampMs, offset, headers}` with `key` and `value` as `Uint8Array`s
 *   viewing the batch (copy them to keep them past the call). Throwing sends the record to the
 *   dead-letter output with the message; the rest of the batch goes on.
 * - `onWatermark(watermarkMs, fired, out)` (optional): event time reached `watermarkMs`;
 *   `fired` holds the timers now due (`{key, timeMs}`), in time order.
 * - `outputs` (optional): names of the named outputs; output `n` is `outputs[n - 1]`.
 * Throwing from `init` refuses the configuration with the message; the pipeline does not start.
 * Timestamps, offsets and `processingTimeMs` are `bigint`s (WIT `s64`).
 */
export function exportStage(init) {
  let stage;
  // One emitter for every call: its buffer is copied out when a call returns, and reusing it
  // keeps the engine's heap, and so the instance's memory, from growing with garbage.
  const out = new Emitter();
  return {
    init(config) {
      try {
        stage = init(config);
      } catch (thrown) {
        // A thrown string becomes the `err` of the WIT `result`.
        throw messageOf(thrown);
      }
      return { outputs: stage.outputs ?? [] };
    },

    process(batch) {
      const { records, data, headers } = batch;
      const cx = {
        topic: batch.topic,
        partition: batch.partition,
        processingTimeMs: batch.processingTimeMs,
      };
      out.clear();
      out.reserve(data.length + (data.length >> 1));
      for (let index = 0; index < records.length; index++) {
        const r = records[index];
        const h = r.headers;
        const record = {
          index,
          key: r.key == null ? undefined : data.subarray(r.key.start, r.key.start + r.key.len),
          value: data.subarray(r.value.start, r.value.start + r.value.len),
          timestampMs: r.timestampMs,
          offset: r.offset,
          headers: h.len === 0 ? NO_HEADERS : headers.slice(h.start, h.start + h.len),
        };
        out.currentInput = index;
        try {
          stage.process(cx, record, out);
        } catch (thrown) {
          out.errors.push({ index, message: messageOf(thrown) });
        }
      }
      return out.finish();
    },

    onWatermark(watermarkMs, fired) {
      out.clear();
      stage.onWatermark?.(watermarkMs, fired, out);
      return out.finish();
    },
  };
}
