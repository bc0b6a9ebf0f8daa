#!/usr/bin/env bash
# The main job on one machine: installs what is missing, builds flowlens, starts the local stack
# (tansu + the chdb ClickHouse front), runs sink, enricher and collector, makes traffic, and prints
# what ClickHouse now holds.
#
#   scripts/demo.sh               # demo: two network namespaces joined by a veth pair, with traffic
#   scripts/demo.sh eth0 60       # your interface eth0 (host namespace) for 60 s of your traffic
#
# Run as root. The stack and the web console (http://127.0.0.1:9400/) keep running afterwards so
# you can query them (curl 'http://127.0.0.1:18123/?query=SELECT+count()+FROM+flows'); stop them
# with scripts/stack/stack.sh stop. A run that stores no new row fails (exit 1).
# FLOWLENS_DEMO_PROFILE=debug uses debug binaries (what scripts/test.sh has built already).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
IFACE=${1:-}
DURATION=${2:-30}
KAFKA=127.0.0.1:${FLOWLENS_KAFKA_PORT:-19092}
CH=http://127.0.0.1:${FLOWLENS_CLICKHOUSE_PORT:-18123}
RUN=$REPO/.stack/demo
NS_A=flowlens-demo-a NS_B=flowlens-demo-b
say() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it loads eBPF programs)" >&2; exit 1; }
bash scripts/setup.sh
export PATH=/usr/lib/llvm-22/bin:$HOME/.cargo/bin:$PATH
PROFILE=${FLOWLENS_DEMO_PROFILE:-release}
case "$PROFILE" in
  release) BUILD=(--release) ;;
  debug) BUILD=() ;;
  *) echo "demo.sh: FLOWLENS_DEMO_PROFILE must be release or debug, not '$PROFILE'" >&2; exit 1 ;;
esac
say "building ($PROFILE)"
cargo build "${BUILD[@]}" -q -p flowlens-collector -p flowlens-enricher -p flowlens-sink -p flowlens-console
BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE

say "starting the local stack"
scripts/stack/stack.sh start
mkdir -p "$RUN"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${HTTP_PID:-}" ] && kill "$HTTP_PID" 2>/dev/null || true
  if [ -z "$IFACE" ]; then ip netns del $NS_A 2>/dev/null || true; ip netns del $NS_B 2>/dev/null || true; fi
}
trap cleanup EXIT

export FLOWLENS_SINK__KAFKA__BROKERS=$KAFKA FLOWLENS_ENRICHER__KAFKA__BROKERS=$KAFKA \
       FLOWLENS_COLLECTOR__KAFKA__BROKERS=$KAFKA FLOWLENS_SINK__CLICKHOUSE__URL=$CH \
       FLOWLENS_SINK__BATCH__MAX_AGE_MS=1000 FLOWLENS_COLLECTOR__COLLECTOR__SCAN_INTERVAL_MS=2000 \
       FLOWLENS_SINK__TELEMETRY__METRICS_LISTEN=127.0.0.1:9103 \
       FLOWLENS_ENRICHER__TELEMETRY__METRICS_LISTEN=127.0.0.1:9102 \
       FLOWLENS_COLLECTOR__TELEMETRY__METRICS_LISTEN=127.0.0.1:9101
say "starting sink and enricher (logs in $RUN)"
"$BIN/flowlens-sink" >"$RUN/sink.log" 2>&1 & pids+=($!)
"$BIN/flowlens-enricher" >"$RUN/enricher.log" 2>&1 & pids+=($!)

before=$(curl -fsS "$CH/" --data-binary "SELECT count() FROM flows" 2>/dev/null || echo 0)
if [ -n "$IFACE" ]; then
  say "collector on $IFACE for $DURATION s"
  FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES=$IFACE "$BIN/flowlens-collector" >"$RUN/collector.log" 2>&1 &
  cpid=$!
  sleep "$DURATION"
else
  say "demo namespaces $NS_A <-> $NS_B (10.99.0.1 <-> 10.99.0.2), collector on veth flA"
  ip netns del $NS_A 2>/dev/null || true; ip netns del $NS_B 2>/dev/null || true
  ip netns add $NS_A; ip netns add $NS_B
  ip link add flA netns $NS_A type veth peer name flB netns $NS_B
  ip -n $NS_A addr add 10.99.0.1/24 dev flA; ip -n $NS_B addr add 10.99.0.2/24 dev flB
  for ns in $NS_A $NS_B; do ip -n $ns link set lo up; done
  ip -n $NS_A link set flA up; ip -n $NS_B link set flB up
  FLOWLENS_COLLECTOR__COLLECTOR__NETNS=$NS_A FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES=flA \
    "$BIN/flowlens-collector" >"$RUN/collector.log" 2>&1 &
  cpid=$!
  sleep 2
  kill -0 $cpid 2>/dev/null || { cat "$RUN/collector.log"; exit 1; }
  say "traffic: HTTP downloads (and two missing files), DNS queries (and two unknown names), UDP datagrams, pings"
  head -c 5000000 /dev/urandom > "$RUN/blob.bin"
  ip netns exec $NS_B python3 -m http.server 8080 --bind 10.99.0.2 --directory "$RUN" >/dev/null 2>&1 &
  HTTP_PID=$!
  # A resolver in B: demo.flowlens.test exists, every other name under flowlens.test does not.
  ip netns exec $NS_B dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=10.99.0.2 --address=/demo.flowlens.test/10.99.0.2 --local=/flowlens.test/ \
    --pid-file="$RUN/dnsmasq.pid" >/dev/null 2>&1 &
  DNS_PID=$!
  sleep 1
  for i in 1 2 3 4 5; do
    ip netns exec $NS_A curl -fsS -o /dev/null "http://10.99.0.2:8080/blob.bin"
  done
  for i in 1 2; do
    ip netns exec $NS_A curl -sS -o /dev/null "http://10.99.0.2:8080/missing-$i.bin"
  done
  for name in demo demo demo nope-1 nope-2; do
    ip netns exec $NS_A dig +short +tries=1 @10.99.0.2 "$name.flowlens.test" >/dev/null
  done
  kill $DNS_PID 2>/dev/null || true
  ip netns exec $NS_A python3 -c '
import socket
for port in (53, 123, 514):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):
        s.sendto(b"x" * 200, ("10.99.0.2", port))'
  ip netns exec $NS_A ping -c 5 -i 0.2 -q 10.99.0.2 >/dev/null
  sleep 1
fi
say "stopping the collector (it drains the kernel table once more before exiting)"
kill -TERM $cpid; wait $cpid || { cat "$RUN/collector.log"; exit 1; }

say "waiting for the rows to reach ClickHouse"
last=-1
for _ in $(seq 1 60); do
  now=$(curl -fsS "$CH/" --data-binary "SELECT count() FROM flows" 2>/dev/null || echo 0)
  if [ "$now" -gt "$before" ] && [ "$now" = "$last" ]; then break; fi
  last=$now; sleep 1
done
echo "rows in flows: $now (new in this run: $((now - before)))"
if [ "$now" -le "$before" ]; then
  echo "demo.sh: no new row reached ClickHouse; logs in $RUN" >&2
  tail -n 20 "$RUN/sink.log" "$RUN/enricher.log" >&2
  exit 1
fi

query() { # file, params
  curl -fsS "$CH/?default_format=PrettyCompactMonoBlock&$2" --data-binary @"$1"
}
say "top talkers, last 15 minutes (sql/queries/top_talkers.sql)"
query sql/queries/top_talkers.sql "param_minutes=15&param_limit=10&param_namespace="
say "traffic per interface, last 15 minutes (sql/queries/traffic_per_interface.sql)"
query sql/queries/traffic_per_interface.sql "param_minutes=15"
say "DNS latency per client and resolver, last 15 minutes (sql/queries/dns_latency.sql)"
query sql/queries/dns_latency.sql "param_minutes=15&param_limit=10&param_namespace="
say "DNS errors by name, last 15 minutes (sql/queries/dns_errors_by_name.sql)"
query sql/queries/dns_errors_by_name.sql "param_minutes=15&param_limit=10&param_namespace="
say "HTTP latency per server, last 15 minutes (sql/queries/http_latency.sql)"
query sql/queries/http_latency.sql "param_minutes=15&param_limit=10&param_namespace="
say "the web console (console/README.md) on these rows"
CONSOLE_PORT=${FLOWLENS_CONSOLE_PORT:-9400}
STACK=${FLOWLENS_STACK_DIR:-$REPO/.stack}
if [ -f "$STACK/console.pid" ]; then kill -TERM "$(cat "$STACK/console.pid")" 2>/dev/null || true; sleep 0.5; fi
cat >"$RUN/console.toml" <<EOF
[console]
listen = "127.0.0.1:$CONSOLE_PORT"
stages = [
  { name = "collector", url = "http://127.0.0.1:9101/metrics" },
  { name = "enricher", url = "http://127.0.0.1:9102/metrics" },
  { name = "sink", url = "http://127.0.0.1:9103/metrics" },
]
[clickhouse]
url = "$CH"
[telemetry]
metrics_listen = "127.0.0.1:9104"
EOF
# It outlives this script, like the stack; scripts/stack/stack.sh stop stops it.
setsid "$BIN/flowlens-console" --config "$RUN/console.toml" >"$RUN/console.log" 2>&1 </dev/null &
echo $! >"$STACK/console.pid"
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$CONSOLE_PORT/" 2>/dev/null && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$CONSOLE_PORT/api/topology?from=$(( $(date +%s) - 900 ))" \
  | python3 -c 'import json, sys; t = json.load(sys.stdin); print("console topology, last 15 minutes: %d nodes, %d edges (table %s)" % (len(t["nodes"]), len(t["edges"]), t["table"]))' \
  || { echo "demo.sh: the console did not answer; its log:" >&2; cat "$RUN/console.log" >&2; exit 1; }
echo "web console: http://127.0.0.1:$CONSOLE_PORT/?range=1h (its Health view shows the stages stopped: the demo ended them)"

say "done. Services' logs: $RUN. Metrics were on :9101 (collector), :9102 (enricher), :9103 (sink)."
echo "The stack and the console are still running: query $CH, stop them with scripts/stack/stack.sh stop"
