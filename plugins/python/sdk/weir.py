"""Write Weir transformation stages in plain Python.

A stage's module (its ``app.py``) says ``Transform = weir.export_stage(init)``;
``componentize-py`` turns it into a WebAssembly component of the ``weir:plugin/stage`` world
(``wit/weir.wit``). The stage's logic sees one record at a time and writes through an
:class:`Emitter`, which lays the output out in columns as the WIT ``output-batch`` wants: one
byte buffer that every record points into with spans.

The types come from the bindings that ``componentize-py bindings`` generates (the package
``wit_world``); with them on ``sys.path`` a stage runs natively, which is how it is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence, Union

from componentize_py_types import Err
from wit_world.imports.types import (
    Batch,
    Header,
    OutputBatch,
    OutputRecord,
    RecordError,
    Span,
    StageInfo,
    Timer,
)

#: A span that covers nothing, shared by the records that have no headers.
_NO_HEADERS = Span(0, 0)

#: What a value may be given as: bytes, text (written as UTF-8), or parts written one after
#: another, which saves joining them first.
Value = Union[bytes, bytearray, memoryview, str, Sequence[Union[bytes, str]]]


class Context(NamedTuple):
    """Where the records of a batch come from, and when the host handed it over."""

    #: Source stream (for Kafka: the topic).
    topic: str
    #: Source partition.
    partition: int
    #: Wall-clock time the host handed the batch over, in ms since the Unix epoch. Use it
    #: instead of a clock so that the output is a function of the input.
    processing_time_ms: int


@dataclass
class Record:
    """One input record."""

    #: Index of the record in its batch.
    index: int
    #: The key, or ``None`` when the record has none.
    key: bytes | None
    #: The value.
    value: bytes
    #: Event time in ms since the Unix epoch.
    timestamp_ms: int
    #: Position in the source partition (for Kafka: the offset).
    offset: int
    #: The record's headers.
    headers: list[Header]


class Emitter:
    """Collects what a stage emits, in the columnar layout the host receives."""

    def __init__(self) -> None:
        #: Keys and values of all emitted records, back to back.
        self.data = bytearray()
        #: The emitted records.
        self.records: list[OutputRecord] = []
        #: Headers of all emitted records.
        self.headers: list[Header] = []
        #: Records that failed.
        self.errors: list[RecordError] = []
        #: Index of the input record being processed, stamped on every record emitted meanwhile.
        self.current_input: int | None = None

    def _write(self, part: bytes | str) -> None:
        self.data += part.encode() if isinstance(part, str) else part

    def emit(
        self,
        key: bytes | None,
        value: Value,
        timestamp_ms: int,
        headers: Sequence[Header] = (),
        output: int = 0,
    ) -> None:
        """Emits a record to ``output`` (0 is the default output, ``n`` the n-th of the
        stage's ``outputs``)."""
        data = self.data
        key_span = None
        if key is not None:
            key_span = Span(len(data), len(key))
            data += key
        start = len(data)
        if isinstance(value, (list, tuple)):
            for part in value:
                self._write(part)
        else:
            self._write(value)
        header_span = _NO_HEADERS
        if headers:
            header_span = Span(len(self.headers), len(headers))
            self.headers.extend(headers)
        self.records.append(
            OutputRecord(
                output,
                self.current_input,
                key_span,
                Span(start, len(data) - start),
                timestamp_ms,
                header_span,
            )
        )

    def finish(self) -> OutputBatch:
        """The WIT ``output-batch`` of everything emitted."""
        return OutputBatch(self.records, bytes(self.data), self.headers, self.errors)


class Stage(Protocol):
    """What ``init`` returns. Only ``process`` is required."""

    #: Names of the named outputs besides the default one: output ``n`` is ``outputs[n - 1]``.
    outputs: list[str]

    def process(self, cx: Context, record: Record, out: Emitter) -> None:
        """Handles one record, emitting into ``out``. Raising an exception sends the record to
        the dead-letter output with the exception's message; the rest of the batch goes on."""

    def on_watermark(self, watermark_ms: int, fired: list[Timer], out: Emitter) -> None:
        """Event time reached ``watermark_ms``; ``fired`` holds the timers now due, in time
        order. Windowed stages emit the windows that closed."""


def export_stage(init: Callable[[str], Stage]) -> type:
    """Builds the ``weir:plugin/transform`` export from a stage's ``init``.

    ``init(config)`` gets the stage's ``config:`` map as JSON text (``{}`` when there is none)
    and returns the stage. An exception raised by ``init`` refuses the configuration with its
    message, and the pipeline does not start.
    """

    class Transform:
        stage: Stage | None = None

        def init(self, config: str) -> StageInfo:
            try:
                Transform.stage = init(config)
            except Exception as error:  # noqa: BLE001 — every refusal goes back to the host
                raise Err(str(error)) from None
            return StageInfo(list(getattr(Transform.stage, "outputs", [])))

        def process(self, batch: Batch) -> OutputBatch:
            stage = Transform.stage
            data = batch.data
            headers = batch.headers
            cx = Context(batch.topic, batch.partition, batch.processing_time_ms)
            out = Emitter()
            errors = out.errors
            for index, r in enumerate(batch.records):
                key = r.key
                value = r.value
                h = r.headers
                record = Record(
                    index,
                    None if key is None else data[key.start : key.start + key.len],
                    data[value.start : value.start + value.len],
                    r.timestamp_ms,
                    r.offset,
                    headers[h.start : h.start + h.len] if h.len else [],
                )
                out.current_input = index
                try:
                    stage.process(cx, record, out)
                except Exception as error:  # noqa: BLE001 — a failed record is not a trap
                    errors.append(RecordError(index, str(error)))
            return out.finish()

        def on_watermark(self, watermark_ms: int, fired: list[Timer]) -> OutputBatch:
            out = Emitter()
            on_watermark = getattr(Transform.stage, "on_watermark", None)
            if on_watermark is not None:
                on_watermark(watermark_ms, fired, out)
            return out.finish()

    return Transform
