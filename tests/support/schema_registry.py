"""The read side of a Confluent-compatible schema registry, for the tests: no registry server can be
installed from the package registries this project may use (Confluent's is Java from Confluent's
own repository; Karapace is not on PyPI), so this serves the one endpoint a consumer needs.

    schema_registry.py PORT ID=SCHEMA.avsc [ID=SCHEMA.avsc ...]

GET /schemas/ids/ID answers {"schema": "<the file's text>"} as the Confluent API does, or 404 with
{"error_code": 40403, "message": "Schema not found"}. It prints "ready" once listening.
"""
import http.server
import json
import sys

SCHEMAS = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        found = len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2] in SCHEMAS
        body = {"schema": SCHEMAS[parts[2]]} if found else {"error_code": 40403, "message": "Schema not found"}
        data = json.dumps(body).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port, *schemas = sys.argv[1:]
    for entry in schemas:
        schema_id, path = entry.split("=", 1)
        with open(path) as f:
            SCHEMAS[schema_id] = f.read()
    server = http.server.HTTPServer(("127.0.0.1", int(port)), Handler)
    print("ready", flush=True)
    server.serve_forever()
