"""The template's logic, run natively: ``plugins/python/build.sh --test``."""

import sys
import unittest
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "sdk")]

import app  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports.types import Batch, InputRecord, Span  # noqa: E402


class Prefix(unittest.TestCase):
    def test_prefixes_values_and_refuses_empty_ones(self):
        transform = app.Transform()
        transform.init('{"prefix":">"}')
        records = [InputRecord(None, Span(0, 2), 5, 0, Span(0, 0)), InputRecord(None, Span(2, 0), 5, 1, Span(0, 0))]
        out = transform.process(Batch("t", 0, 0, records, b"ab", []))
        span = out.records[0].value
        self.assertEqual(out.data[span.start : span.start + span.len], b">ab")
        self.assertEqual([(e.index, e.message) for e in out.errors], [(1, "empty value")])
        with self.assertRaises(Err):
            transform.init('{"x":1}')


if __name__ == "__main__":
    unittest.main()
