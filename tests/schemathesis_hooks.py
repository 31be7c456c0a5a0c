"""Schemathesis hooks for `weir serve`'s OpenAPI document (tests/serve.rs runs it).

Plugins travel as `application/wasm`, raw bytes, which schemathesis serializes as it does
`application/octet-stream` once told so.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
