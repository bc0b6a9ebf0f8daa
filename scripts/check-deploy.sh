#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine needed):
#   - docker-compose.yml resolves (`docker-compose config`, Debian's docker-compose 1.29) and
#     passes yamllint;
#   - every FLOWLENS_* variable in docker-compose.yml belongs to the stage of its service and
#     names a key of that stage's configuration (the keys of <stage>/<stage>.example.toml);
#   - the example TOML files parse; Dockerfile COPY sources exist and are not .dockerignore'd;
#     Cargo.lock is in sync (the image builds with --locked);
#   - if the binaries are built (target/debug or target/release, or FLOWLENS_BIN_DIR): each
#     example, and each service's environment from docker-compose.yml, gets through the real
#     configuration loader (the binary then fails at Kafka/ClickHouse, not with exit status 2),
#     and a misspelt key is rejected with status 2.
# Installs docker-compose and yamllint with apt-get when missing (root) — idempotent.
#
#   scripts/check-deploy.sh            # exit 0 when every check passed
set -uo pipefail
cd "$(dirname "$0")/.."

PASS=0
FAIL=0
SKIP=0
ok() { PASS=$((PASS + 1)); printf '  ok    %s\n' "$*"; }
bad() { FAIL=$((FAIL + 1)); printf '  FAIL  %s\n' "$*"; }
skip() { SKIP=$((SKIP + 1)); printf '  skip  %s\n' "$*"; }
log() { printf '\033[1m[check-deploy]\033[0m %s\n' "$*"; }

STAGES=(collector enricher sink)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The system Python has PyYAML (a dependency of docker-compose and yamllint) and tomllib (3.11).
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

# ---------------------------------------------------------------------------------------------
log "tools"
need=()
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v yamllint >/dev/null 2>&1 || need+=(yamllint)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt: installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >/dev/null
  else
    log "missing ${need[*]} and cannot apt-get install them (not root / no apt)"
  fi
fi

# ---------------------------------------------------------------------------------------------
log "docker-compose.yml"
if command -v docker-compose >/dev/null 2>&1; then
  if docker-compose -f docker-compose.yml config >"$TMP/compose.yml" 2>"$TMP/compose.err"; then
    ok "docker-compose config ($(docker-compose version --short 2>/dev/null))"
  else
    bad "docker-compose config: $(cat "$TMP/compose.err")"
  fi
else
  skip "docker-compose not available"
fi
if command -v yamllint >/dev/null 2>&1; then
  YAMLLINT_CONF='{extends: default, rules: {line-length: {max: 100}, document-start: disable,
    truthy: {check-keys: false}}}'
  if out=$(yamllint -f parsable -d "$YAMLLINT_CONF" docker-compose.yml 2>&1); then
    ok "yamllint docker-compose.yml"
  else
    bad "yamllint docker-compose.yml:"$'\n'"$out"
  fi
else
  skip "yamllint not available"
fi

# ---------------------------------------------------------------------------------------------
log "configuration keys (examples and compose environment)"
# Writes $TMP/env.<stage> (the FLOWLENS_* variables of the service running flowlens-<stage>,
# one NAME=VALUE a line) and prints ok/FAIL lines.
"$PY" - "$TMP" "${STAGES[@]}" <<'EOF' >"$TMP/keys.out" 2>&1
import os, re, sys, tomllib
import yaml

tmp, stages = sys.argv[1], sys.argv[2:]
failures = 0

def say(good, msg):
    global failures
    failures += not good
    print(("  ok    " if good else "  FAIL  ") + msg)

def flatten(table, prefix=()):
    for k, v in table.items():
        path = prefix + (k,)
        yield path
        if isinstance(v, dict):
            yield from flatten(v, path)

keys = {}
for stage in stages:
    path = f"{stage}/{stage}.example.toml"
    try:
        with open(path, "rb") as f:
            keys[stage] = set(flatten(tomllib.load(f)))
        say(True, f"{path} is valid TOML ({len(keys[stage])} keys)")
    except Exception as e:
        say(False, f"{path}: {e}")

compose_path = os.path.join(tmp, "compose.yml")
if not os.path.exists(compose_path) or os.path.getsize(compose_path) == 0:
    compose_path = "docker-compose.yml"  # unresolved, but the environment maps are literal
with open(compose_path) as f:
    services = yaml.safe_load(f).get("services", {})

seen = set()
for name, svc in services.items():
    cmd = svc.get("command") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    stage = next((s for s in stages if cmd and cmd[0] == f"flowlens-{s}"), None)
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    flowlens_env = {k: v for k, v in env.items() if k.startswith("FLOWLENS")}
    if stage is None:
        say(not flowlens_env, f"service {name}: no flowlens command, no FLOWLENS_* variable")
        continue
    seen.add(stage)
    prefix = f"FLOWLENS_{stage.upper()}__"
    with open(os.path.join(tmp, f"env.{stage}"), "w") as out:
        for var, value in sorted(flowlens_env.items()):
            out.write(f"{var}={'' if value is None else value}\n")
            if not var.startswith(prefix):
                say(False, f"service {name}: {var} does not start with {prefix} (ignored by the binary)")
                continue
            path = tuple(var[len(prefix):].lower().split("__"))
            known = path in keys.get(stage, ()) and not (
                # a whole section set from one variable is not a key
                any(p[: len(path)] == path and len(p) > len(path) for p in keys[stage])
            )
            if path[:2] == ("kafka", "properties") and len(path) == 3:
                known = True
            say(known, f"service {name}: {var} -> {'.'.join(path)}")
            if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9][0-9_.eE+-]*", value) and path[-1] == "password":
                say(False, f"service {name}: {var} looks numeric and would be type-converted")
for stage in stages:
    say(stage in seen, f"docker-compose.yml runs flowlens-{stage}")
sys.exit(1 if failures else 0)
EOF
cat "$TMP/keys.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/keys.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/keys.out")))

# ---------------------------------------------------------------------------------------------
log "Dockerfile and build context"
"$PY" - <<'EOF' >"$TMP/docker.out" 2>&1
import fnmatch, os, re

ignore = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
def ignored(path):
    path = path.rstrip("/")
    parts = path.split("/")
    for pat in ignore:
        pat = pat.rstrip("/")
        for i in range(1, len(parts) + 1):
            head = "/".join(parts[:i])
            if fnmatch.fnmatch(head, pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                return True
    return False

text = open("Dockerfile").read().replace("\\\n", " ")
bad = 0
for line in text.splitlines():
    words = line.split()
    if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
        continue
    for src in [w for w in words[1:-1] if not w.startswith("--")]:
        if src == ".":
            continue
        if not os.path.exists(src):
            print(f"  FAIL  Dockerfile COPY {src}: no such file"); bad += 1
        elif ignored(src):
            print(f"  FAIL  Dockerfile COPY {src}: excluded by .dockerignore"); bad += 1
        else:
            print(f"  ok    Dockerfile COPY {src}")
for needed in ["Cargo.toml", "Cargo.lock", "sql/migrations", "schemas/avro", "collector-ebpf/src"]:
    if ignored(needed):
        print(f"  FAIL  {needed} is excluded by .dockerignore but the build needs it"); bad += 1
    else:
        print(f"  ok    {needed} is in the build context")
EOF
cat "$TMP/docker.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/docker.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/docker.out")))
if command -v cargo >/dev/null 2>&1; then
  if cargo metadata --locked --format-version 1 >/dev/null 2>"$TMP/lock.err"; then
    ok "Cargo.lock is in sync (the image builds with --locked)"
  else
    bad "cargo metadata --locked: $(grep -v '^ *Download' "$TMP/lock.err" | tail -3)"
  fi
else
  skip "cargo not available: Cargo.lock not checked"
fi

# ---------------------------------------------------------------------------------------------
log "configuration loader of the real binaries"
BIN_DIR=${FLOWLENS_BIN_DIR:-}
if [ -z "$BIN_DIR" ]; then
  for d in target/debug target/release; do
    [ -x "$d/flowlens-sink" ] || [ -x "$d/flowlens-collector" ] || continue
    BIN_DIR=$d
    break
  done
fi
# Nothing listens on port 1 of the loopback: Kafka and ClickHouse fail fast after the
# configuration is accepted.
BAD_BROKER=127.0.0.1:1
BAD_CLICKHOUSE=http://127.0.0.1:1

# run_loader STAGE LABEL EXPECT(ok|config-error) [ENV=VALUE ...] -- ARGS...
# A configuration error exits 2 at once; anything else (a Kafka/ClickHouse failure, or still
# running after 3 s and stopped) means the configuration was accepted.
run_loader() {
  local stage=$1 label=$2 expect=$3
  shift 3
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  # In a subshell that does not exec, so that the "Killed" notice lands in run.out.
  (
    env -i PATH="$PATH" HOME="${HOME:-/root}" "${envs[@]}" \
      timeout -k 2 3 "$BIN_DIR/flowlens-$stage" "$@"
    exit $?
  ) >"$TMP/run.out" 2>&1
  local rc=$?
  local config_error=no
  if [ $rc = 2 ] || grep -q 'flowlens-[a-z]*: configuration' "$TMP/run.out"; then
    config_error=yes
  fi
  local first
  first=$(grep -m1 -E 'configuration|error|failed' "$TMP/run.out" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160)
  if [ "$expect" = ok ] && [ $config_error = no ]; then
    ok "$label (exit $rc: ${first:-still running after 3 s})"
  elif [ "$expect" = config-error ] && [ $config_error = yes ]; then
    ok "$label (exit $rc: $first)"
  else
    bad "$label: exit $rc, expected $expect:"$'\n'"$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/run.out" | tail -5)"
  fi
}

if [ -z "$BIN_DIR" ]; then
  skip "no built binaries (cargo build -p flowlens-collector -p flowlens-enricher -p flowlens-sink)"
else
  log "binaries in $BIN_DIR"
  for stage in "${STAGES[@]}"; do
    if [ ! -x "$BIN_DIR/flowlens-$stage" ]; then
      skip "flowlens-$stage not built"
      continue
    fi
    P="FLOWLENS_${stage^^}"
    example="$stage/$stage.example.toml"
    fail_fast=("${P}__KAFKA__BROKERS=$BAD_BROKER")
    [ "$stage" = sink ] && fail_fast+=("${P}__CLICKHOUSE__URL=$BAD_CLICKHOUSE")

    run_loader "$stage" "flowlens-$stage --config $example" ok \
      "${fail_fast[@]}" -- --config "$example"

    # Negative control: the loader does reject an unknown key.
    sed 's/^log_level = /log_levle = /' "$example" >"$TMP/typo.toml"
    run_loader "$stage" "flowlens-$stage rejects a misspelt key (log_levle)" config-error \
      "${fail_fast[@]}" -- --config "$TMP/typo.toml"

    if [ -s "$TMP/env.$stage" ]; then
      mapfile -t compose_env <"$TMP/env.$stage"
      # Same variables as in docker-compose.yml; kafka/clickhouse do not resolve here.
      run_loader "$stage" "flowlens-$stage with its docker-compose.yml environment" ok \
        "${compose_env[@]}" --
    fi
  done
fi

echo
echo "check-deploy: $PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" = 0 ]
