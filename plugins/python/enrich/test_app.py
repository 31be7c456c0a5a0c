"""The enrich stage's logic, run natively:
``plugins/python/build.sh --test`` (or, with the bindings on the path, ``python -m unittest``)."""

import sys
import unittest
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "sdk")]

import app  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports.types import Batch, InputRecord, Span  # noqa: E402


def run(values, topic="trades", key=b"k"):
    """Runs one batch of ``values`` (text or bytes) through the stage, as the host would."""
    transform = app.Transform()
    assert transform.init("{}").outputs == []
    data = bytearray()
    records = []
    for i, value in enumerate(values):
        value = value.encode() if isinstance(value, str) else value
        records.append(
            InputRecord(
                Span(len(data), len(key)),
                Span(len(data) + len(key), len(value)),
                1_700_000_000_000,
                42 + i,
                Span(0, 0),
            )
        )
        data += key + value
    return transform.process(Batch(topic, 3, 1_700_000_000_500, records, bytes(data), []))


def value(out, i):
    span = out.records[i].value
    return out.data[span.start : span.start + span.len].decode()


def error(text):
    out = run([text])
    assert not out.records, f"accepted {text!r}"
    return out.errors[0].message


FIELDS = (
    '"kafka_topic":"trades","kafka_partition":3,"kafka_offset":42,'
    '"kafka_timestamp":1700000000000,"ingestion_timestamp":1700000000500}'
)


class Enrich(unittest.TestCase):
    def test_adds_the_metadata_fields_after_the_members_byte_for_byte(self):
        out = run(['{"s":"BTCUSDT","p":"1.5"}', " {} \n", "{ }", '{"a":1} '])
        self.assertEqual(out.errors, [])
        self.assertEqual(value(out, 0), '{"s":"BTCUSDT","p":"1.5",' + FIELDS)
        self.assertEqual(value(out, 1), " {" + FIELDS.replace("42", "43"))
        self.assertEqual(value(out, 2), "{ " + FIELDS.replace("42", "44"))
        self.assertEqual(value(out, 3), '{"a":1,' + FIELDS.replace("42", "45"))
        record = out.records[1]
        self.assertEqual(out.data[record.key.start : record.key.start + record.key.len], b"k")
        self.assertEqual(record.derived_from, 1)
        self.assertEqual(record.timestamp_ms, 1_700_000_000_000)

    def test_escapes_the_topic_as_serde_json_does(self):
        out = run(["{}"], topic='a"b\\c\n\x01\x7fé')
        self.assertIn('"kafka_topic":"a\\"b\\\\c\\n\\u0001\x7fé"', value(out, 0))

    def test_replaces_fields_that_are_already_there_keeping_members_as_written(self):
        out = run(
            [
                '{"kafka_offset":"old","big":12345678901234567890,"d":1.10,"a":{"kafka_topic":1}}',
                '{"kafka\\u005ftopic":1, "x" : [1, {"y":"}"}] ,"x":2}',
                '{"kafka_topic":1}',
            ]
        )
        self.assertEqual(out.errors, [])
        self.assertEqual(
            value(out, 0),
            '{"big":12345678901234567890,"d":1.10,"a":{"kafka_topic":1},' + FIELDS,
        )
        self.assertEqual(
            value(out, 1), '{"x" : [1, {"y":"}"}],"x":2,' + FIELDS.replace("42", "43")
        )
        self.assertEqual(value(out, 2), "{" + FIELDS.replace("42", "44"))

    def test_refuses_what_is_not_exactly_one_json_object(self):
        for bad in [
            "not json", "[1,2]", "42", '{"a":1', "{} {}", "", '{"a":NaN}', '{"a":Infinity}',
            '{"a":-Infinity}', '{"a":"\\ud800"}', '{"a":"\\udc00\\ud800"}', '{"\\ud800\\u0041":1}',
            "\ufeff{}", '{"a":1,}', '{"a":01}', '{"a":"\x01"}', "{\xa0}", '{"a":1\u0661}',
            '{"a":' + "[" * 128 + "]" * 128 + "}",
            '{"s":"]]","a":' + "[" * 128 + "]" * 128 + "}",
            '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
        ]:
            self.assertRegex(error(bad), r"^value is not a JSON object: ", repr(bad))
        self.assertEqual(
            error(b'{"\xff":1}'), "value is not a JSON object: invalid UTF-8 at byte 2"
        )

    def test_accepts_what_serde_json_accepts(self):
        out = run(
            [
                '{"a":"\\ud83d\\ude00\\\\ud800"}',
                '{"a":' + "[" * 127 + "]" * 127 + "}",
                '{"a":"' + "[" * 200 + '","b":"\\"' + "{" * 200 + '"}',
                '{"a":-0.5e+10,"b":[1,2,{"c":null}],"d":true,"e":false,"f":"x\\"y\\\\z\\u00e9\\n"}',
            ]
        )
        self.assertEqual(out.errors, [])

    def test_refuses_settings_naming_the_least_key(self):
        with self.assertRaises(Err) as refused:
            app.Transform().init('{"x":1,"b":2}')
        self.assertEqual(refused.exception.value, "enrich takes no settings, found `b`")
        with self.assertRaises(Err) as refused:
            app.Transform().init("[]")
        self.assertTrue(refused.exception.value.startswith("config is not a JSON object"))

    def test_a_watermark_emits_nothing(self):
        transform = app.Transform()
        transform.init("{}")
        self.assertEqual(transform.on_watermark(5, []).records, [])


if __name__ == "__main__":
    unittest.main()
