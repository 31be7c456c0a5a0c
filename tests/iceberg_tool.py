"""Independent Iceberg reader for the tests (pyiceberg and DuckDB, not Weir's iceberg crate).

    iceberg_tool.py scan      CATALOG --table NS.NAME [--columns a,b,c]
        prints every row of the current snapshot as a JSON line with the given columns (default:
        all), sorted by them where their types allow; bytes as hex, times and decimals as text
    iceberg_tool.py files     CATALOG --table NS.NAME
        prints {"snapshot_id": current, "files": [path], "counts": {path: n}}: "files", every
        data file that a live entry of any snapshot's manifests references; "counts", how many
        live entries of the current snapshot's manifests reference each of its files (2 or
        more: a duplicate)
    iceberg_tool.py snapshots CATALOG --table NS.NAME
        prints each snapshot as a JSON line: snapshot_id, parent_snapshot_id, sequence_number,
        timestamp_ms, summary (operation and properties), manifest_list
    iceberg_tool.py manifests CATALOG --table NS.NAME
        prints each manifest of the current snapshot as a JSON line: path, content ("data" or
        "deletes"), sequence_number, files (path and content of each live entry: "data",
        "position-deletes" or "equality-deletes")
    iceberg_tool.py duckdb-scan CATALOG --table NS.NAME [--columns a,b,c]
        as scan, but the rows are read by DuckDB's iceberg_scan from the table's current
        metadata file (pyiceberg only finds that file's location); DuckDB applies the
        table's delete files itself
    iceberg_tool.py duckdb-count --metadata PATH [--s3-endpoint URL]
        prints the row count DuckDB's iceberg_scan reads from a metadata file
    iceberg_tool.py ls [--s3-endpoint URL] PREFIX
        prints the key of every object under s3://weir/PREFIX, one a line, sorted (pyarrow)
    iceberg_tool.py parquet [--s3-endpoint URL] GLOB
        prints every row of the Parquet files s3://weir/GLOB as a JSON line (DuckDB)

CATALOG is --catalog-type sql|rest --uri URI [--warehouse W] [--catalog-name NAME]
[--s3-endpoint URL]. A sql URI is given as Weir gives it (sqlx: sqlite:PATH, sqlite://PATH,
postgres://…, postgresql://…) or as SQLAlchemy does (with a +driver); the catalog name
(default weir) must be the writer's. A rest URI is the catalog's base URL; the warehouse of
`tests/services.sh start s3` is its table bucket `weir-tables`, also the default. The S3 login
is AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default weir / weirsecret), also the REST
catalog's OAuth2 credential. --s3-endpoint defaults to AWS_ENDPOINT_URL; give one of them, as
SeaweedFS's catalog tells pyiceberg no endpoint.
"""
import argparse
import datetime
import decimal
import glob
import importlib.util
import json
import os
import sys
import urllib.parse
import uuid

KEY = os.environ.get("AWS_ACCESS_KEY_ID", "weir")
SECRET = os.environ.get("AWS_SECRET_ACCESS_KEY", "weirsecret")
REGION = os.environ.get("AWS_REGION", "us-east-1")


def sqlalchemy_uri(uri):
    """sqlx's URI forms to SQLAlchemy's (which reads `sqlite:///x` as a relative path)."""
    scheme, _, rest = uri.partition(":")
    if scheme == "sqlite":
        path = (rest[2:] if rest.startswith("//") else rest).split("?")[0]
        return "sqlite:///" + os.path.abspath("/" + path.lstrip("/") if path.startswith("/") else path)
    if scheme in ("postgres", "postgresql"):
        # pyiceberg[sql-postgres] installs psycopg2; SQLAlchemy 2.1 would pick psycopg 3.
        return "postgresql+psycopg2:" + rest
    return uri


def catalog(args):
    from pyiceberg.catalog import load_catalog

    props = {"s3.access-key-id": KEY, "s3.secret-access-key": SECRET, "s3.region": REGION,
             "s3.path-style-access": "true"}
    if args.s3_endpoint:
        props["s3.endpoint"] = args.s3_endpoint
    if args.warehouse:
        props["warehouse"] = args.warehouse
    if args.catalog_type == "sql":
        # Read only: don't create the catalog's tables in someone else's database.
        props.update(uri=sqlalchemy_uri(args.uri), init_catalog_tables="false")
    else:
        props.update(uri=args.uri, credential=f"{KEY}:{SECRET}")
    return load_catalog(args.catalog_name, type=args.catalog_type, **props)


def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID, datetime.timedelta)):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def scan(args):
    table = catalog(args).load_table(args.table)
    columns = tuple(args.columns.split(",")) if args.columns else ("*",)
    rows = table.scan(selected_fields=columns).to_arrow()
    try:
        rows = rows.sort_by([(name, "ascending") for name in rows.column_names])
    except Exception:
        pass  # nested columns don't sort: scan order
    for row in rows.to_pylist():
        print(json.dumps(plain(row)))


def live_data_files(table, snapshot):
    from pyiceberg.manifest import DataFileContent, ManifestContent

    for manifest in snapshot.manifests(table.io):
        if manifest.content == ManifestContent.DATA:
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.data_file.content == DataFileContent.DATA:
                    yield entry.data_file.file_path


def files(args):
    table = catalog(args).load_table(args.table)
    every = {path for snapshot in table.snapshots() for path in live_data_files(table, snapshot)}
    current, counts = table.current_snapshot(), {}
    for path in live_data_files(table, current) if current else ():
        counts[path] = counts.get(path, 0) + 1
    print(json.dumps({"snapshot_id": current and current.snapshot_id, "files": sorted(every), "counts": counts},
                     sort_keys=True))


def snapshots(args):
    for s in catalog(args).load_table(args.table).snapshots():
        summary = {"operation": s.summary.operation.value, **s.summary.additional_properties} if s.summary else {}
        print(json.dumps({"snapshot_id": s.snapshot_id, "parent_snapshot_id": s.parent_snapshot_id,
                          "sequence_number": s.sequence_number, "timestamp_ms": s.timestamp_ms,
                          "summary": summary, "manifest_list": s.manifest_list}))


def duckdb_connection(endpoint):
    import duckdb

    # Offline: the extensions come from their PyPI wheels, never from DuckDB's download site.
    # iceberg needs avro and httpfs loaded first, or it tries to install them.
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    for name in ("httpfs", "avro", "iceberg"):
        package = os.path.dirname(importlib.util.find_spec(f"duckdb_extension_{name}").origin)
        (path,) = glob.glob(f"{package}/extensions/v{duckdb.__version__}/{name}.duckdb_extension")
        con.execute(f"LOAD '{path}'")
    if endpoint:
        url = urllib.parse.urlsplit(endpoint)
        con.execute("CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', "
                    "USE_SSL ?)", [KEY, SECRET, REGION, url.netloc, url.scheme == "https"])
    return con


def manifests(args):
    from pyiceberg.manifest import DataFileContent, ManifestContent

    table = catalog(args).load_table(args.table)
    current = table.current_snapshot()
    kinds = {DataFileContent.DATA: "data", DataFileContent.POSITION_DELETES: "position-deletes",
             DataFileContent.EQUALITY_DELETES: "equality-deletes"}
    for manifest in current.manifests(table.io) if current else ():
        entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        print(json.dumps({
            "path": manifest.manifest_path,
            "content": "data" if manifest.content == ManifestContent.DATA else "deletes",
            "sequence_number": manifest.sequence_number,
            "files": [{"path": e.data_file.file_path, "content": kinds[e.data_file.content]} for e in entries],
        }))


def duckdb_scan(args):
    location = catalog(args).load_table(args.table).metadata_location
    columns = args.columns.split(",") if args.columns else None
    select = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    rows = duckdb_connection(args.s3_endpoint).execute(
        f"SELECT {select} FROM iceberg_scan(?) ORDER BY ALL", [location])
    names = [column[0] for column in rows.description]
    for row in rows.fetchall():
        print(json.dumps(plain(dict(zip(names, row)))))


def duckdb_count(args):
    con = duckdb_connection(args.s3_endpoint)
    (count,) = con.execute("SELECT count(*) FROM iceberg_scan(?)", [args.metadata]).fetchone()
    print(count)


def parquet(args):
    rows = duckdb_connection(args.s3_endpoint).execute("SELECT * FROM read_parquet(?)", [f"s3://weir/{args.glob}"])
    names = [column[0] for column in rows.description]
    for row in rows.fetchall():
        print(json.dumps(plain(dict(zip(names, row)))))


def ls(args):
    import pyarrow.fs as pafs

    if args.s3_endpoint:
        url = urllib.parse.urlsplit(args.s3_endpoint)
        fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region=REGION, scheme=url.scheme,
                               endpoint_override=url.netloc, force_virtual_addressing=False)
    else:
        fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region=REGION)
    found = fs.get_file_info(pafs.FileSelector(f"weir/{args.prefix}", recursive=True, allow_not_found=True))
    for key in sorted(f.path.removeprefix("weir/") for f in found if f.type == pafs.FileType.File):
        print(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in (("scan", scan), ("files", files), ("snapshots", snapshots), ("manifests", manifests),
                      ("duckdb-scan", duckdb_scan)):
        sub = commands.add_parser(name)
        sub.set_defaults(run=run)
        sub.add_argument("--catalog-type", choices=("sql", "rest"), required=True)
        sub.add_argument("--uri", required=True)
        sub.add_argument("--warehouse")
        sub.add_argument("--catalog-name", default="weir")
        sub.add_argument("--table", required=True)
        sub.add_argument("--s3-endpoint")
        if name in ("scan", "duckdb-scan"):
            sub.add_argument("--columns")
    sub = commands.add_parser("duckdb-count")
    sub.set_defaults(run=duckdb_count)
    sub.add_argument("--metadata", required=True)
    sub.add_argument("--s3-endpoint")
    for name, run, what in (("ls", ls, "prefix"), ("parquet", parquet, "glob")):
        sub = commands.add_parser(name)
        sub.set_defaults(run=run)
        sub.add_argument("--s3-endpoint")
        sub.add_argument(what)
    args = parser.parse_args()
    args.s3_endpoint = args.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
