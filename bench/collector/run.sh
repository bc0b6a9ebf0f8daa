#!/usr/bin/env bash
# Collector benchmark: the same generated traffic (bench/collector/pktgen.rs, AF_PACKET +
# sendmmsg, 60-byte UDP frames) over a veth pair between two namespaces, received on fbB's veth,
# with no collector, with an empty TC program (the floor: bench/collector/empty_tc.rs, attached
# with TCX like flowlens), with flowlens, and with the libpcap peers from Debian (pmacctd,
# softflowd, nfpcapd) attached to the receiving side, one after the other in the same run.
#
#   sudo bench/collector/run.sh                 # 16, 100k and 1M flows, max rate, 30 s each
#   FLOWS="16" SECONDS_PER_RUN=4 SCAN_MS=1000 sudo bench/collector/run.sh
#   DELIVER=1 sudo bench/collector/run.sh       # frames delivered to a UDP socket (udp_sink.rs)
#                                               # instead of dropped by the receiving stack
#
# Reports per run: packets received by the veth per second (top rate; on a veth the receive
# work runs on the sender's CPU, so a collector that slows the receive path lowers it), that rate
# against no program and against the empty program, packets accounted by the collector /
# received, collector CPU (% of one core), softirq CPU, total CPU per received packet (softirq +
# collector process), collector RSS (peak, which for flowlens includes the kernel flow table it
# maps, and private memory at the end), and for flowlens the longest table read (drain) and the
# kernel ns/packet from bpf_stats (for the empty program too, and for the drop program with the
# socket programs on: the receiving stack drops every generated frame). bpf_stats costs time on
# every packet, so it is off while rates and CPU are measured and on only in a second, shorter
# pass of the same traffic for the ns/packet columns.
# Writes bench/results/collector.md and its plot, collector.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
FLOWS=${FLOWS:-"16 100000 1000000"}
DUR=${SECONDS_PER_RUN:-30}
STATS_DUR=${STATS_SECONDS:-4}
# flowlens scan interval (ms): every live flow is exported once per scan (Skydive's kernel scan
# default is 10 s, netobserv's 5 s); runs last several scans so their cost is in the CPU column.
SCAN_MS=${SCAN_MS:-10000}
# flowlens: flow accounting only (what the peers do; the L7 tap watches its default ports, DNS
# 53 and HTTP 80/8080, which this traffic does not use); flowlens-l7off: the same with no L7
# port (the tap off); flowlens+sockets: with the socket programs too (RTT, retransmits, drops
# with reason, processes). This traffic goes to a port nothing listens on, so every packet is a
# kernel drop that the drop tracepoint records.
MODES=${MODES:-"none empty flowlens flowlens-l7off flowlens+sockets pmacctd softflowd nfpcapd"}
# Another flowlens build to compare in the same run (modes flowlens-main, flowlens-main+sockets),
# e.g. the main branch's: MAIN_COLLECTOR=/path/to/flowlens-collector MAIN_LABEL="main at abc1234".
MAIN_COLLECTOR=${MAIN_COLLECTOR:-}
MAIN_LABEL=${MAIN_LABEL:-$MAIN_COLLECTOR}
# flowlens table slots: two per flow of the largest run keeps every flow in the table.
TABLE_SIZE=${TABLE_SIZE:-2097152}
DELIVER=${DELIVER:-}
OUT=${OUT:-$REPO/bench/results/collector${DELIVER:+-delivered}.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flowlens-bench.XXXX")
A=fbA B=fbB
KAFKA_PORT=19392 CH_PORT=18393

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
bash scripts/setup.sh >/dev/null
export PATH=/usr/lib/llvm-22/bin:$HOME/.cargo/bin:$PATH
for p in pmacct softflowd nfdump bpftool; do
  dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q "ok installed" || apt-get install -y -qq --no-install-recommends $p >/dev/null
done
cargo build --release -q -p flowlens-collector -p flowlens-bench
mkdir -p target && rustc -O --edition 2021 bench/collector/pktgen.rs -o target/pktgen
rustc -O --edition 2021 bench/collector/empty_tc.rs -o target/empty_tc
rustc -O --edition 2021 bench/collector/udp_sink.rs -o target/udp_sink
COLLECTOR=${CARGO_TARGET_DIR:-$REPO/target}/release/flowlens-collector

cleanup() {
  [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null || true
  [ -n "${SINK:-}" ] && kill "$SINK" 2>/dev/null || true
  FLOWLENS_STACK_DIR=$WORK/stack FLOWLENS_KAFKA_PORT=$KAFKA_PORT FLOWLENS_CLICKHOUSE_PORT=$CH_PORT \
    scripts/stack/stack.sh stop >/dev/null 2>&1 || true
  ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
ip netns add $A; ip netns add $B
ip link add vA netns $A type veth peer name vB netns $B
ip -n $A link set vA up; ip -n $B link set vB up
ip -n $A link set lo up; ip -n $B link set lo up
PKTGEN_ARGS=()
if [ -n "$DELIVER" ]; then
  # Frames to vB's own MAC and address, port 9, where udp_sink reads them.
  ip -n $B addr add 10.251.0.2/16 dev vB
  ip netns exec $B sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.vB.rp_filter=0
  mac=$(ip -n $B -j link show vB | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')
  PKTGEN_ARGS=(--dst-mac "$mac" --dst-ip 10.251.0.2)
  ip netns exec $B "$REPO/target/udp_sink" &
  SINK=$!
fi
FLOWLENS_STACK_DIR=$WORK/stack FLOWLENS_KAFKA_PORT=$KAFKA_PORT FLOWLENS_CLICKHOUSE_PORT=$CH_PORT \
  scripts/stack/stack.sh start >/dev/null
sysctl -q kernel.bpf_stats_enabled=0

rx_packets() { ip -n $B -s -j link show vB | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'; }
softirq_jiffies() { awk '/^cpu /{print $8}' /proc/stat; }
proc_jiffies() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
rss_mb() { awk '/VmHWM/{printf "%.0f", $2/1024}' /proc/$1/status 2>/dev/null || echo 0; }
private_mb() { awk '/RssAnon/{printf "%.0f", $2/1024}' /proc/$1/status 2>/dev/null || echo 0; }
bpf_cost() { # total run_time_ns run_cnt of the programs named (full, or cut at 15 chars without BTF)
  bpftool prog show -j 2>/dev/null | python3 -c '
import json,sys
names=sys.argv[1:]
t=c=0
for p in json.load(sys.stdin):
    if p.get("name","") in names:
        t+=p.get("run_time_ns",0); c+=p.get("run_cnt",0)
print(t, c)' "$@"; }
TC_PROGRAMS="flowlens_ingress flowlens_ingres flowlens_egress flowlens_empty"
DROP_PROGRAM="flowlens_kfree_skb flowlens_kfree_"
metric() { curl -fsS http://127.0.0.1:9191/metrics 2>/dev/null | awk -v m="$1" '$1==m{print $2}'; }
HZ=$(getconf CLK_TCK)

start_collector() { # mode flows -> sets CPID
  case $1 in
    none) CPID= ;;
    empty)
      ip netns exec $B "$REPO/target/empty_tc" vB >"$WORK/empty.log" 2>&1 &
      CPID=$!
      for _ in $(seq 1 50); do grep -q attached "$WORK/empty.log" && break; sleep 0.1; done ;;
    flowlens|flowlens-l7off|flowlens+sockets|flowlens-main|flowlens-main+sockets)
      sockets=false; [ "${1%+sockets}" != "$1" ] && sockets=true
      binary=$COLLECTOR; [ "${1%+sockets}" = flowlens-main ] && binary=$MAIN_COLLECTOR
      # The L7 keys only for this build (an older one refuses unknown keys).
      l7=(); [ "$1" = flowlens-l7off ] && l7=(FLOWLENS_COLLECTOR__COLLECTOR__DNS_PORTS= FLOWLENS_COLLECTOR__COLLECTOR__HTTP_PORTS=)
      env "${l7[@]}" \
      FLOWLENS_COLLECTOR__COLLECTOR__SOCKET_METRICS=$sockets \
      FLOWLENS_COLLECTOR__KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT \
      FLOWLENS_COLLECTOR__KAFKA__TOPICS__RAW_FLOWS=bench.raw.$2 \
      FLOWLENS_COLLECTOR__COLLECTOR__NETNS=$B FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES=vB \
      FLOWLENS_COLLECTOR__COLLECTOR__TABLE_SIZE=$TABLE_SIZE \
      FLOWLENS_COLLECTOR__COLLECTOR__SCAN_INTERVAL_MS=$SCAN_MS \
      FLOWLENS_COLLECTOR__TELEMETRY__METRICS_LISTEN=127.0.0.1:9191 \
      FLOWLENS_COLLECTOR__TELEMETRY__LOG_FORMAT=json \
        "$binary" >"$WORK/flowlens.log" 2>&1 &
      CPID=$!
      # Traffic starts once the programs are attached (loading can take seconds).
      for _ in $(seq 1 300); do grep -q '"collector running"' "$WORK/flowlens.log" && break; sleep 0.1; done ;;
    pmacctd)
      rm -f "$WORK/pmacct.csv"
      cat > "$WORK/pmacct.conf" <<CONF
interface: vB
plugins: print
aggregate: src_host,dst_host,src_port,dst_port,proto
print_output: csv
print_output_file: $WORK/pmacct.csv
print_output_file_append: true
print_refresh_time: 2
CONF
      ip netns exec $B pmacctd -f "$WORK/pmacct.conf" >"$WORK/pmacct.log" 2>&1 &
      CPID=$! ;;
    softflowd)
      ip netns exec $B softflowd -d -i vB -n 127.0.0.1:9995 -m 2000000 >"$WORK/softflowd.log" 2>&1 &
      CPID=$! ;;
    nfpcapd)
      mkdir -p "$WORK/nf"; rm -rf "$WORK/nf"/*
      ip netns exec $B nfpcapd -i vB -w "$WORK/nf" -t 60 >"$WORK/nfpcapd.log" 2>&1 &
      CPID=$! ;;
  esac
  sleep 3
}

# Stops the collector and waits for it to exit (from a subshell: `wait` cannot be used).
# It stays a zombie until the main shell reaps it, so look at its state, not its existence.
running() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stop_and_wait() { kill -"$1" "$CPID" 2>/dev/null || true; while running "$CPID"; do sleep 0.2; done; }

accounted() { # mode flows -> packets counted by the collector (or "-"); stops the collector
  case $1 in
    flowlens*) stop_and_wait TERM
              grep -o '"packets_exported":[0-9]*' "$WORK/flowlens.log" | tail -n1 | cut -d: -f2 ;;
    pmacctd) stop_and_wait INT
             python3 - "$WORK/pmacct.csv" <<'PY'
import csv, sys
total = 0
try:
    for row in csv.DictReader(open(sys.argv[1])):
        v = row.get("PACKETS") or row.get("packets") or ""
        if v.isdigit():  # appended refreshes repeat the header line
            total += int(v)
except FileNotFoundError:
    pass
print(total)
PY
             ;;
    nfpcapd) stop_and_wait TERM
             f=$(find "$WORK/nf" -type f -name 'nfcapd.*' | head -n1)
             if [ -n "$f" ]; then nfdump -N -r "$f" -q -o 'fmt:%pkt' 2>/dev/null | awk '{s+=$1} END{print s+0}'; else echo -; fi ;;
    *) echo - ;;
  esac
}

printf '| flows | collector | rx packets/s | vs none | vs empty | accounted | collector CPU | softirq CPU | total CPU ns/pkt | RSS MB | private MB | longest drain ms | kernel ns/pkt | drop program ns/pkt |\n' > "$WORK/table.md"
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n' >> "$WORK/table.md"
for flows in $FLOWS; do
  base= empty_base=
  for mode in $MODES; do
    echo "[bench] flows=$flows collector=$mode" >&2
    start_collector $mode $flows
    rx0=$(rx_packets); si0=$(softirq_jiffies); pj0=$( [ -n "${CPID:-}" ] && proc_jiffies $CPID || echo 0)
    sent=$(ip netns exec $A "$REPO/target/pktgen" --ifname vA --flows "$flows" --seconds "$DUR" "${PKTGEN_ARGS[@]}" | awk '{print $2}')
    rx1=$(rx_packets); si1=$(softirq_jiffies); pj1=$( [ -n "${CPID:-}" ] && proc_jiffies $CPID || echo 0)
    rss=$( [ -n "${CPID:-}" ] && rss_mb $CPID || echo -)
    private=$( [ -n "${CPID:-}" ] && private_mb $CPID || echo -)
    t0=0 t1=0 c0=0 c1=0 d0=0 d1=0 e0=0 e1=0 drain=-
    if [ "$mode" = empty ] || [ "${mode#flowlens}" != "$mode" ]; then
      # Second pass, bpf_stats on, for the kernel's own ns/packet.
      sysctl -q kernel.bpf_stats_enabled=1
      read -r t0 c0 < <(bpf_cost $TC_PROGRAMS)
      read -r d0 e0 < <(bpf_cost $DROP_PROGRAM)
      ip netns exec $A "$REPO/target/pktgen" --ifname vA --flows "$flows" --seconds "$STATS_DUR" "${PKTGEN_ARGS[@]}" >/dev/null
      read -r t1 c1 < <(bpf_cost $TC_PROGRAMS)
      read -r d1 e1 < <(bpf_cost $DROP_PROGRAM)
      sysctl -q kernel.bpf_stats_enabled=0
      [ "$mode" = empty ] || drain=$(metric 'flowlens_collector_drain_seconds{quantile="1"}')
    fi
    rx2=$(rx_packets)
    got=$(accounted $mode $flows || echo -)
    if [ -n "${CPID:-}" ]; then kill -TERM "$CPID" 2>/dev/null || true; wait "$CPID" 2>/dev/null || true; CPID=; fi
    rx=$((rx1 - rx0))
    python3 - "$flows" "$mode" "$rx" "$DUR" "${base:-$rx}" "${empty_base:--}" "$got" "$((pj1 - pj0))" "$((si1 - si0))" "$HZ" "$rss" "$private" "$((t1 - t0))" "$((c1 - c0))" "$((d1 - d0))" "$((e1 - e0))" "$sent" "$((rx2 - rx0))" "${drain:--}" >> "$WORK/table.md" <<'PY'
import sys
flows, mode, rx, dur, base, empty_base, got, pj, si, hz, rss, private, t, c, dt, dc, sent, rx_all, drain = sys.argv[1:]
rx, dur, base, pj, si, hz, t, c, dt, dc, rx_all = int(rx), float(dur), int(base), int(pj), int(si), int(hz), int(t), int(c), int(dt), int(dc), int(rx_all)
# The collector counts both passes; so does rx_all.
acc = "-" if got in ("-", "") else f"{100.0 * float(got) / rx_all:.1f} %" if rx_all else "-"
ns = f"{t / c:.0f}" if (mode == "empty" or mode.startswith("flowlens")) and c else "-"
drop = f"{dt / dc:.0f}" if mode.endswith("+sockets") and dc else "-"
cpu = "-" if mode in ("none", "empty") else f"{100.0 * pj / hz / dur:.1f} %"
total = f"{1e9 * (si + pj) / hz / rx:.0f}" if rx else "-"
vs_empty = "-" if empty_base == "-" else f"{100.0 * rx / int(empty_base):.0f} %"
dr = "-" if drain in ("-", "") else f"{1000.0 * float(drain):.0f}"
print(f"| {int(flows):,} | {mode} | {rx / dur:,.0f} | {100.0 * rx / base:.0f} % | {vs_empty} | {acc} | {cpu} | {100.0 * si / hz / dur:.0f} % | {total} | {rss} | {private} | {dr} | {ns} | {drop} |")
PY
    [ "$mode" = none ] && base=$rx
    [ "$mode" = empty ] && empty_base=$rx
    tail -n1 "$WORK/table.md" >&2
  done
done

mkdir -p "$(dirname "$OUT")"
{
  echo "# Collector benchmark"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(date -u +%Y-%m-%d)."
  echo "Command: \`${DELIVER:+DELIVER=1 }${MAIN_COLLECTOR:+MAIN_COLLECTOR=<$MAIN_LABEL> }FLOWS=\"$FLOWS\" SECONDS_PER_RUN=$DUR SCAN_MS=$SCAN_MS MODES=\"$MODES\" sudo bench/collector/run.sh\`"
  echo
  [ -n "$MAIN_COLLECTOR" ] && echo "flowlens-main: the collector built from $MAIN_LABEL, same settings."
  echo "flowlens: scan interval $SCAN_MS ms (every live flow exported once per scan), table_size $TABLE_SIZE;"
  echo "rates and CPU measured with kernel.bpf_stats_enabled=0; kernel ns/pkt from a second"
  echo "$STATS_DUR s pass of the same traffic with bpf_stats on (the empty program's too; drop program:"
  echo "the socket programs' kfree_skb program, per dropped frame); longest drain = the slowest read"
  echo "of the kernel table (flowlens_collector_drain_seconds, max)."
  echo
  echo "Traffic: 60-byte UDP frames from pktgen (AF_PACKET + sendmmsg) at maximum rate over a veth"
  if [ -n "$DELIVER" ]; then
    echo "pair; collectors attached to the receiving veth, whose stack delivers every frame to a UDP"
    echo "socket (udp_sink.rs, recvmmsg; it runs in every mode, none included; the drop program"
    echo "column counts frames the socket still dropped). \"vs none\" / \"vs empty\" are the receive"
    echo "rate relative to the same"
  else
    echo "pair; collectors attached to the receiving veth, whose stack drops every frame (addressed to"
    echo "a MAC nobody owns). \"vs none\" / \"vs empty\" are the receive rate relative to the same"
  fi
  echo "traffic with no program / with the empty TC program in this run. Total CPU ns/pkt: softirq"
  echo "plus collector process CPU per received packet. RSS MB: the collector's peak (flowlens: with"
  echo "the kernel flow table it maps, 136 B per slot); private MB: its own memory at the end of the"
  echo "run. Accounted: packets the collector reported /"
  echo "packets the veth received (flowlens: its packets counter after the final scans; pmacctd:"
  echo "its CSV; nfpcapd: nfdump; softflowd exports NetFlow and is not counted here)."
  echo
  cat "$WORK/table.md"
  echo
  echo "![rate kept and collector CPU]($(basename "${OUT%.md}").png)"
} > "$OUT"
echo "[bench] wrote $OUT" >&2
"${CARGO_TARGET_DIR:-$REPO/target}/release/flowlens-bench" plot-collector --input "$OUT" --output "${OUT%.md}.png" >&2
