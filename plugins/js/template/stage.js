// A stage to start from: copy this folder, rename, and build it with
//   plugins/js/build.sh path/to/stage.js path/to/stage.wasm
// It passes every record through, tagging its value with the `prefix:` setting, and sends
// records with an empty value to the dead-letter output.

import { exportStage } from '../sdk/weir.js';

const encoder = new TextEncoder();

/** Reads the stage's `config:` map (JSON text, `{}` when the pipeline gives none). */
function init(config) {
  const { prefix = '', ...unknown } = JSON.parse(config);
  const extra = Object.keys(unknown);
  if (extra.length > 0) throw `unknown setting \`${extra[0]}\``;
  if (typeof prefix !== 'string') throw '`prefix` must be a string';
  const prefixBytes = encoder.encode(prefix);
  return {
    // Names of extra outputs besides the default one (0); each must be wired to a sink.
    outputs: [],
    process(cx, record, out) {
      // Throwing sends this record to the dead-letter output; the batch goes on.
      if (record.value.length === 0) throw 'empty value';
      out.emit(record.key, [prefixBytes, record.value], record.timestampMs, record.headers);
    },
    // Optional: called when event time advances, with the timers that fired.
    onWatermark(watermarkMs, fired, out) {},
  };
}

/** The `weir:plugin/transform` export: the name and shape the world `stage` asks for. */
export const transform = exportStage(init);
