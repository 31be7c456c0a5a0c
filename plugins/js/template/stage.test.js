// The template's logic, run natively: `node --test plugins/js/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { transform } from './stage.js';

test('prefixes values and refuses empty ones', () => {
  transform.init('{"prefix":">"}');
  const data = new TextEncoder().encode('ab');
  const span = (start, len) => ({ start, len });
  const record = (value) => ({ key: undefined, value, timestampMs: 5n, offset: 0n, headers: span(0, 0) });
  const out = transform.process({
    topic: 't',
    partition: 0,
    processingTimeMs: 0n,
    records: [record(span(0, 2)), record(span(2, 0))],
    data,
    headers: [],
  });
  const { start, len } = out.records[0].value;
  assert.equal(new TextDecoder().decode(out.data.subarray(start, start + len)), '>ab');
  assert.deepEqual(out.errors, [{ index: 1, message: 'empty value' }]);
  assert.throws(() => transform.init('{"x":1}'), (e) => e === 'unknown setting `x`');
});
