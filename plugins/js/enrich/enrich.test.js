// The enrich stage's logic, run natively: `node --test plugins/js/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { transform } from './enrich.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs one batch of `values` (strings or bytes) through the stage, as the host would. */
function run(values, { topic = 'trades', key = 'k' } = {}) {
  assert.deepEqual(transform.init('{}'), { outputs: [] });
  const parts = [];
  let length = 0;
  const records = values.map((value, i) => {
    const keyBytes = encoder.encode(key);
    const valueBytes = typeof value === 'string' ? encoder.encode(value) : value;
    parts.push(keyBytes, valueBytes);
    const record = {
      key: { start: length, len: keyBytes.length },
      value: { start: length + keyBytes.length, len: valueBytes.length },
      timestampMs: 1_700_000_000_000n,
      offset: 42n + BigInt(i),
      headers: { start: 0, len: 0 },
    };
    length += keyBytes.length + valueBytes.length;
    return record;
  });
  const data = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    data.set(part, at);
    at += part.length;
  }
  return transform.process({
    topic,
    partition: 3,
    processingTimeMs: 1_700_000_000_500n,
    records,
    data,
    headers: [],
  });
}

function value(out, i) {
  const { start, len } = out.records[i].value;
  return decoder.decode(out.data.subarray(start, start + len));
}

function error(text) {
  const out = run([text]);
  assert.equal(out.records.length, 0, `accepted ${JSON.stringify(text)}`);
  return out.errors[0].message;
}

test('adds the metadata fields after the members, byte for byte', () => {
  const out = run(['{"s":"BTCUSDT","p":"1.5"}', ' {} \n', '{ }', '{"a":1} ']);
  assert.deepEqual(out.errors, []);
  const fields =
    '"kafka_topic":"trades","kafka_partition":3,"kafka_offset":42,' +
    '"kafka_timestamp":1700000000000,"ingestion_timestamp":1700000000500}';
  assert.equal(value(out, 0), `{"s":"BTCUSDT","p":"1.5",${fields}`);
  assert.equal(value(out, 1), ` {${fields.replace('42', '43')}`);
  assert.equal(value(out, 2), `{ ${fields.replace('42', '44')}`);
  assert.equal(value(out, 3), `{"a":1,${fields.replace('42', '45')}`);
  const { key, derivedFrom, timestampMs } = out.records[1];
  assert.equal(decoder.decode(out.data.subarray(key.start, key.start + key.len)), 'k');
  assert.equal(derivedFrom, 1);
  assert.equal(timestampMs, 1_700_000_000_000n);
});

test('escapes the topic as serde_json does', () => {
  const out = run(['{}'], { topic: 'a"b\\c\n\u0001\u007fé' });
  assert.match(value(out, 0), /"kafka_topic":"a\\"b\\\\c\\n\\u0001\u007fé"/);
});

test('replaces fields that are already there, keeping the other members as written', () => {
  const out = run([
    '{"kafka_offset":"old","big":12345678901234567890,"d":1.10,"a":{"kafka_topic":1}}',
    '{"kafka\\u005ftopic":1, "x" : [1, {"y":"}"}] ,"x":2}',
  ]);
  assert.deepEqual(out.errors, []);
  assert.equal(
    value(out, 0),
    '{"big":12345678901234567890,"d":1.10,"a":{"kafka_topic":1},"kafka_topic":"trades",' +
      '"kafka_partition":3,"kafka_offset":42,"kafka_timestamp":1700000000000,' +
      '"ingestion_timestamp":1700000000500}',
  );
  assert.equal(
    value(out, 1),
    '{"x" : [1, {"y":"}"}],"x":2,"kafka_topic":"trades","kafka_partition":3,"kafka_offset":43,' +
      '"kafka_timestamp":1700000000000,"ingestion_timestamp":1700000000500}',
  );
});

test('refuses what is not exactly one JSON object', () => {
  for (const bad of [
    'not json', '[1,2]', '42', '{"a":1', '{} {}', '', '{"a":NaN}', '{"a":Infinity}',
    '{"a":-Infinity}', '{"a":"\\ud800"}', '{"a":"\\udc00\\ud800"}', '{"\\ud800\\u0041":1}',
    '\ufeff{}', '{"a":1,}', '{"a":01}', '{"a":"\u0001"}', '{\u00a0}',
    `{"a":${'['.repeat(128)}${']'.repeat(128)}}`,
    `{"s":"]]","a":${'['.repeat(128)}${']'.repeat(128)}}`,
    `{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
  ]) {
    assert.match(error(bad), /^value is not a JSON object: /, JSON.stringify(bad));
  }
  assert.equal(
    error(new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])),
    'value is not a JSON object: invalid UTF-8',
  );
});

test('accepts what serde_json accepts', () => {
  const out = run([
    '{"a":"\\ud83d\\ude00\\\\ud800"}',
    `{"a":${'['.repeat(127)}${']'.repeat(127)}}`,
    `{"a":"${'['.repeat(200)}","b":"\\"${'{'.repeat(200)}"}`,
    '{"a":-0.5e+10,"b":[1,2,{"c":null}],"d":true,"e":false,"f":"x\\"y\\\\z\\u00e9\\n"}',
  ]);
  assert.deepEqual(out.errors, []);
});

test('refuses settings, naming the least key', () => {
  assert.throws(() => transform.init('{"x":1,"b":2}'), (e) => e === 'enrich takes no settings, found `b`');
  assert.throws(() => transform.init('[]'), (e) => e.startsWith('config is not a JSON object'));
});

test('a watermark emits nothing', () => {
  transform.init('{}');
  assert.deepEqual(transform.onWatermark(5n, []).records, []);
});
