#!/usr/bin/env bash
# Runs every flowlens test on this machine: installs what is missing (scripts/setup.sh), then
# formatting, lints, a short fuzz run of every decoder and `cargo test`. Tests start the real
# services they need themselves (tansu, the chdb ClickHouse front, Debian's clickhouse-server
# 18.16) on free ports, and create their own network namespaces: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH=/usr/lib/llvm-22/bin:$HOME/.cargo/bin:$PATH

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets -- -D warnings

step "deployment files checked offline (compose, Kubernetes, dashboards, example configs)"
cargo build -q -p flowlens-collector -p flowlens-enricher -p flowlens-sink
bash scripts/check-deploy.sh

step "fuzz smoke: every decoder of outside bytes, ${FLOWLENS_FUZZ_SECONDS:-5} s each from the committed corpora (fuzz/README.md)"
fuzz_work=$(mktemp -d)
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$fuzz_work/$target"
  # New inputs go to a scratch directory; fuzz/corpus/<target> is only read.
  if ! cargo +nightly fuzz run -s none --target-dir "${CARGO_TARGET_DIR:-$PWD/target}/fuzz" \
    "$target" "$fuzz_work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="${FLOWLENS_FUZZ_SECONDS:-5}" -timeout=5 -rss_limit_mb=2048 -max_len=8192 \
    -artifact_prefix="$fuzz_work/$target-" >"$fuzz_work/$target.log" 2>&1; then
    tail -n 40 "$fuzz_work/$target.log"
    echo "fuzz target $target failed; its input is in $fuzz_work"
    exit 1
  fi
  echo "$target: $(grep -E '^Done' "$fuzz_work/$target.log")"
done
rm -rf "$fuzz_work"

step "cargo test"
# Tests inside one binary run in parallel; on 2 cores two at a time keeps the brokers responsive.
cargo test -- --test-threads="${FLOWLENS_TEST_THREADS:-2}"

step "the demo twice, the stack stopped in between: the second run stores its rows (issue 18)"
# The stack keeps ClickHouse's rows and forgets every topic (tansu: memory storage), so the
# second run's offsets start again at 0 below the offsets already stored.
mkdir -p .stack
for run in 1 2; do
  FLOWLENS_DEMO_PROFILE=debug bash scripts/demo.sh > ".stack/demo-run-$run.log" 2>&1 \
    || { cat ".stack/demo-run-$run.log"; exit 1; }
  grep -E "^rows in flows" ".stack/demo-run-$run.log"
  bash scripts/stack/stack.sh stop
done
echo "demo: 2 passed, 0 failed"
