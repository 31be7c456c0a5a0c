"""``enrich``, in Python: adds where a record came from and when it was ingested to a JSON
object. Behaves as the Rust plugin (plugins/enrich) does, byte for byte on the common path.

Each value must be exactly one JSON object (RFC 8259); the stage adds ``kafka_topic``,
``kafka_partition``, ``kafka_offset``, ``kafka_timestamp`` (the record's event time) and
``ingestion_timestamp`` (the batch's processing time). Anything else is a per-record error.

The common case, an object without any of those fields, is handled by writing the fields before
the value's closing brace; the value's bytes are copied, never re-serialised. An object that has
one of them keeps the text of its other members as it was, then gets the fields, so numbers
such as 1.10 or 1e400 come out as they went in.
"""

from __future__ import annotations

import json
import re

import weir

#: The fields the stage adds, in the order it writes them.
FIELDS = (
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "ingestion_timestamp",
)
_FIELD_SET = frozenset(FIELDS)

#: How deep arrays and objects may nest, as in serde_json (the top-level object is level 1).
MAX_DEPTH = 128

#: A ``\\u`` escape of a UTF-16 surrogate: only then can an escape be a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: Every escape in a text, in order (so that ``\\\\u`` is read as ``\\\\`` then ``u``).
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|[^u])")
#: A string (escapes and all) or a bracket: the tokens that decide how deep a text nests.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
#: JSON whitespace.
_SPACE = re.compile(r"[ \t\n\r]*")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


#: Python's parser with NaN, Infinity and -Infinity refused; otherwise it is as strict as
#: RFC 8259 but for escapes of lone surrogates and nesting, checked in ``parse_object``.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_object(text: str) -> dict:
    """Parses ``text`` as exactly one JSON object, as strictly as serde_json. Raises
    ``ValueError`` saying what is wrong."""
    # Before parsing: the parser recurses once per level, and deep enough nesting exhausts the
    # WebAssembly stack (a trap) before Python's recursion limit.
    if text.count("{") + text.count("[") > MAX_DEPTH and _nested_too_deeply(text):
        raise ValueError("nested too deeply")
    value = _DECODER.decode(text)
    if not isinstance(value, dict):
        raise ValueError("expected `{`")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(text):
        raise ValueError("lone surrogate in \\u escape")
    return value


def _nested_too_deeply(text: str) -> bool:
    """Whether brackets outside strings nest deeper than ``MAX_DEPTH``. On text that is not
    JSON it may say yes where the parser would stop at an earlier error, never the reverse."""
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(text):
        match token[0]:
            case "{" | "[":
                depth += 1
                if depth > MAX_DEPTH:
                    return True
            case "}" | "]":
                depth -= 1
    return False


def _has_lone_surrogate(text: str) -> bool:
    """Whether a ``\\u`` escape in ``text`` (already valid JSON) is a surrogate without its
    pair."""
    pending = -1  # end of the last escape when it was a leading surrogate
    for escape in _ESCAPE.finditer(text):
        unit = -1 if escape[1] is None else int(escape[1], 16)
        trailing = 0xDC00 <= unit <= 0xDFFF
        if pending >= 0:
            if escape.start() != pending or not trailing:
                return True
            pending = -1
        elif 0xD800 <= unit <= 0xDBFF:
            pending = escape.end()
        elif trailing:
            return True
    return pending >= 0


def members(text: str) -> list[tuple[str, str]]:
    """The top-level members of ``text``, a valid JSON object: ``(key, member)``, ``key``
    unescaped and ``member`` the text from the key's opening quote to the end of its value."""
    found = []
    scan = _DECODER.scan_once
    i = _SPACE.match(text, text.index("{") + 1).end()
    if text[i] == "}":
        return found
    while True:
        i = _SPACE.match(text, i).end()
        start = i
        key, i = scan(text, i)
        i = _SPACE.match(text, _SPACE.match(text, i).end() + 1).end()
        _, i = scan(text, i)
        found.append((key, text[start:i]))
        i = _SPACE.match(text, i).end()
        if text[i] == "}":
            return found
        i += 1


class Enrich:
    """The stage. It keeps the text of the added fields that every record of a batch shares."""

    def __init__(self) -> None:
        #: The batch context the texts below were made for.
        self.cx: weir.Context | None = None
        #: From ``"kafka_topic"`` to the ``:`` before the offset, as UTF-8.
        self.head = b""
        #: From ``,"ingestion_timestamp"`` to the closing brace.
        self.tail = b""

    def process(self, cx: weir.Context, record: weir.Record, out: weir.Emitter) -> None:
        if self.cx is not cx:
            self.cx = cx
            topic = json.dumps(cx.topic, ensure_ascii=False)
            self.head = f'"kafka_topic":{topic},"kafka_partition":{cx.partition},"kafka_offset":'.encode()
            self.tail = b',"ingestion_timestamp":%d}' % cx.processing_time_ms
        value = record.value
        try:
            text = value.decode()
            obj = parse_object(text)
        except UnicodeDecodeError as error:
            raise ValueError(f"value is not a JSON object: invalid UTF-8 at byte {error.start}") from None
        except ValueError as error:
            raise ValueError(f"value is not a JSON object: {error}") from None
        if not _FIELD_SET.isdisjoint(obj):
            out.emit(record.key, self.rebuild(text, record), record.timestamp_ms, record.headers)
            return
        fields = b'%d,"kafka_timestamp":%d' % (record.offset, record.timestamp_ms)
        inside = value.rstrip(b" \t\n\r")[:-1]
        comma = b"," if obj else b""
        out.emit(record.key, (inside, comma, self.head, fields, self.tail), record.timestamp_ms, record.headers)

    def rebuild(self, text: str, record: weir.Record) -> bytes:
        """The slow path: the text of the object's other members as it was written, then the
        fields. The output is the Rust plugin's, byte for byte."""
        kept = "".join(f"{member}," for key, member in members(text) if key not in _FIELD_SET)
        fields = b'%d,"kafka_timestamp":%d' % (record.offset, record.timestamp_ms)
        return b"{" + kept.encode() + self.head + fields + self.tail


def init(config: str) -> Enrich:
    """Refuses any setting: the stage has none."""
    try:
        settings = parse_object(config)
    except ValueError as error:
        raise ValueError(f"config is not a JSON object: {error}") from None
    if settings:
        # The least key, as the Rust plugin's sorted map reports it.
        raise ValueError(f"enrich takes no settings, found `{min(settings)}`")
    return Enrich()


#: The ``weir:plugin/transform`` export.
Transform = weir.export_stage(init)
