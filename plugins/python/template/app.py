"""A stage to start from: copy this folder, rename, and build it with
``plugins/python/build.sh path/to/folder path/to/stage.wasm`` (the module must be ``app.py``).

It passes every record through, tagging its value with the ``prefix`` setting, and sends
records with an empty value to the dead-letter output.
"""

import json

import weir


class Prefix:
    #: Names of extra outputs besides the default one (0); each must be wired to a sink.
    outputs: list[str] = []

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def process(self, cx: weir.Context, record: weir.Record, out: weir.Emitter) -> None:
        # Raising sends this record to the dead-letter output; the batch goes on.
        if not record.value:
            raise ValueError("empty value")
        out.emit(record.key, (self.prefix, record.value), record.timestamp_ms, record.headers)

    def on_watermark(self, watermark_ms: int, fired: list, out: weir.Emitter) -> None:
        """Optional: called when event time advances, with the timers that fired."""


def init(config: str) -> Prefix:
    """Reads the stage's ``config:`` map (JSON text, ``{}`` when the pipeline gives none)."""
    settings = json.loads(config)
    prefix = settings.pop("prefix", "")
    if settings:
        raise ValueError(f"unknown setting `{next(iter(settings))}`")
    if not isinstance(prefix, str):
        raise ValueError("`prefix` must be a string")
    return Prefix(prefix.encode())


#: The ``weir:plugin/transform`` export: the name the world ``stage`` asks for.
Transform = weir.export_stage(init)
