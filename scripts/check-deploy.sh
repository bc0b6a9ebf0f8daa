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
#     and a misspelt key is rejected with status 2; the same for the ConfigMap files of
#     deploy/kubernetes;
#   - compose image references are pinned official images (or the locally built flowlens
#     image), bind-mounted files exist, Grafana installs the ClickHouse plugin;
#   - deploy/kubernetes: yamllint, kubernetes-validate --strict (offline schemas), the
#     kustomization lists every manifest, every FLOWLENS_* variable and ConfigMap key is a key of
#     its stage, the collector keeps only the capabilities it needs;
#   - Grafana dashboards (deploy/grafana): JSON parses, data sources are provisioned, every
#     ClickHouse query runs against the chdb front with sql/migrations applied (macros replaced by
#     concrete expressions), every Prometheus metric is one the services register.
# Installs docker-compose and yamllint with apt-get, kubernetes-validate with pip into
# /opt/flowlens-venv, when missing (root) — idempotent.
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
  if out=$(yamllint -f parsable -d "$YAMLLINT_CONF" deploy/ 2>&1); then
    ok "yamllint deploy/ ($(find deploy -name '*.yml' -o -name '*.yaml' | wc -l) files)"
  else
    bad "yamllint deploy/:"$'\n'"$out"
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
    test = " ".join((svc.get("healthcheck") or {}).get("test") or [])
    say("/readyz" in test, f"service {name}: healthcheck asks /readyz")
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
for stage in stages:
    say(stage in seen, f"docker-compose.yml runs flowlens-{stage}")
sys.exit(1 if failures else 0)
EOF
cat "$TMP/keys.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/keys.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/keys.out")))

# ---------------------------------------------------------------------------------------------
log "docker-compose.yml images and mounted files"
"$PY" - "$TMP" <<'EOF' >"$TMP/images.out" 2>&1
import os, re, sys
import yaml

tmp = sys.argv[1]
compose_path = os.path.join(tmp, "compose.yml")
if not os.path.exists(compose_path) or os.path.getsize(compose_path) == 0:
    compose_path = "docker-compose.yml"
raw = yaml.safe_load(open("docker-compose.yml"))
services = raw.get("services", {})
# Official images only (Docker Hub's official/verified publishers), pinned to a version.
OFFICIAL = {"apache/kafka", "clickhouse/clickhouse-server", "prom/prometheus", "grafana/grafana"}
def say(good, msg):
    print(("  ok    " if good else "  FAIL  ") + msg)
for name, svc in services.items():
    image = svc.get("image", "")
    repo, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
    if "build" in svc:
        say(image == "flowlens:local", f"service {name}: built from the Dockerfile as {image}")
        continue
    say(repo in OFFICIAL, f"service {name}: image {image} is an official image")
    say(bool(re.fullmatch(r"v?\d+(\.\d+)+", tag)), f"service {name}: image {image} pinned to a version")
    for vol in svc.get("volumes", []) or []:
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith("./"):
            say(os.path.exists(src), f"service {name}: mounted {src} exists")
names = set(services)
for wanted in ["kafka", "clickhouse", "flowlens-collector", "flowlens-enricher", "flowlens-sink", "prometheus", "grafana"]:
    say(wanted in names, f"service {wanted} present")
graf = services.get("grafana", {}).get("environment", {}) or {}
say("grafana-clickhouse-datasource" in str(graf.get("GF_INSTALL_PLUGINS", "")),
    "grafana installs grafana-clickhouse-datasource")
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
say(targets == {"127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"},
    f"prometheus scrapes collector :9101, enricher :9102, sink :9103 ({sorted(targets)})")
env = {s: (services[f"flowlens-{s}"].get("environment") or {}) for s in ("collector", "enricher", "sink")}
for stage, port in (("collector", 9101), ("enricher", 9102), ("sink", 9103)):
    listen = str(env[stage].get(f"FLOWLENS_{stage.upper()}__TELEMETRY__METRICS_LISTEN", ""))
    say(listen.endswith(f":{port}"), f"flowlens-{stage} serves metrics on :{port} ({listen})")
EOF
cat "$TMP/images.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/images.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/images.out")))

# ---------------------------------------------------------------------------------------------
log "deploy/kubernetes"
VENV=${FLOWLENS_VENV:-/opt/flowlens-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/pip" ] && [ "$(id -u)" = 0 ]; then
  log "pip: installing kubernetes-validate into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0" >/dev/null 2>&1 || true
fi
MANIFESTS=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || MANIFESTS+=("$f")
done
if [ -x "$VENV/bin/kubernetes-validate" ]; then
  for kv in 1.30.0 1.37.0; do
    if out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$kv" "${MANIFESTS[@]}" 2>&1) \
        && ! grep -qE '^(ERROR|WARN)' <<<"$out"; then
      ok "kubernetes-validate --strict -k $kv (${#MANIFESTS[@]} files)"
    else
      bad "kubernetes-validate -k $kv:"$'\n'"$out"
    fi
  done
else
  skip "kubernetes-validate not available ($VENV/bin/kubernetes-validate)"
fi
"$PY" - "$TMP" "${STAGES[@]}" <<'EOF' >"$TMP/k8s.out" 2>&1
import glob, os, re, sys, tomllib
import yaml

tmp, stages = sys.argv[1], sys.argv[2:]
def say(good, msg):
    print(("  ok    " if good else "  FAIL  ") + msg)
def flatten(table, prefix=()):
    for k, v in table.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from flatten(v, prefix + (k,))
keys = {s: set(flatten(tomllib.load(open(f"{s}/{s}.example.toml", "rb")))) for s in stages}

docs = {}
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(path)):
        if d:
            docs.setdefault(os.path.basename(path), []).append(d)
kust = docs.pop("kustomization.yaml")[0]
listed = set(kust.get("resources", []))
for f in docs:
    if f.endswith(".example.yaml"):
        say(f not in listed, f"{f} is an example, not in kustomization.yaml")
    else:
        say(f in listed, f"kustomization.yaml lists {f}")
for f in listed:
    say(os.path.exists(f"deploy/kubernetes/{f}"), f"kustomization.yaml resource {f} exists")
objs = [d for ds in docs.values() for d in ds]
by_kind = {}
for o in objs:
    by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o

# ConfigMap files: valid TOML whose every key is a key of that stage.
cm = by_kind["ConfigMap"]["flowlens-config"]["data"]
for stage in stages:
    text = cm.get(f"{stage}.toml")
    if text is None:
        say(False, f"ConfigMap flowlens-config has no {stage}.toml")
        continue
    open(os.path.join(tmp, f"k8s.{stage}.toml"), "w").write(text)
    try:
        paths = set(flatten(tomllib.loads(text)))
    except tomllib.TOMLDecodeError as e:
        say(False, f"ConfigMap {stage}.toml: {e}")
        continue
    unknown = sorted(".".join(p) for p in paths - keys[stage] if p[:2] != ("kafka", "properties"))
    say(not unknown, f"ConfigMap {stage}.toml: {len(paths)} keys, all in {stage}.example.toml"
        + (f"; unknown: {unknown}" if unknown else ""))
topics = {s: tomllib.loads(cm[f"{s}.toml"]).get("kafka", {}) for s in stages if f"{s}.toml" in cm}
parts = {s: t.get("partitions", 4) for s, t in topics.items()}
say(len(set(parts.values())) == 1, f"the three stages agree on kafka.partitions ({parts})")

# Workloads: command names the stage; FLOWLENS_* variables are keys of that stage; the
# ConfigMap item mounted is the stage's own file; images consistent.
images = set()
workloads = list(by_kind.get("DaemonSet", {}).values()) + list(by_kind.get("Deployment", {}).values())
for w in workloads:
    spec = w["spec"]["template"]["spec"]
    for c in spec["containers"]:
        images.add(c["image"])
        cmd = c.get("command", [])
        stage = next((s for s in stages if cmd and cmd[0] == f"flowlens-{s}"), None)
        where = f"{w['kind']} {w['metadata']['name']}"
        if stage is None:
            say(False, f"{where}: command {cmd} runs no flowlens stage")
            continue
        cfg = cmd[cmd.index("--config") + 1] if "--config" in cmd else ""
        say(cfg.endswith(f"/{stage}.toml"), f"{where}: --config {cfg}")
        probe = lambda kind: (c.get(kind) or {}).get("httpGet", {}).get("path")
        say(probe("livenessProbe") == "/healthz" and probe("readinessProbe") == "/readyz",
            f"{where}: liveness probe /healthz, readiness probe /readyz")
        items = [i["key"] for v in spec.get("volumes", []) if "configMap" in v for i in v["configMap"].get("items", [])]
        say(items == [f"{stage}.toml"], f"{where}: mounts ConfigMap item {items}")
        prefix = f"FLOWLENS_{stage.upper()}__"
        for e in c.get("env", []):
            n = e["name"]
            if not n.startswith("FLOWLENS"):
                continue
            path = tuple(n[len(prefix):].lower().split("__")) if n.startswith(prefix) else ()
            say(path in keys[stage], f"{where}: {n} -> {'.'.join(path) or '?'}")
        if stage == "collector":
            sc = c.get("securityContext", {})
            caps = sc.get("capabilities", {})
            say(caps.get("drop") == ["ALL"] and set(caps.get("add", [])) == {"BPF", "PERFMON", "NET_ADMIN"}
                and sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False,
                f"{where}: all capabilities dropped but BPF, PERFMON, NET_ADMIN; not privileged")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            say({"/sys/kernel/btf", "/sys/fs/bpf"} <= mounts, f"{where}: mounts BTF and bpffs")
            say(spec.get("hostNetwork") is True, f"{where}: host network")
        else:
            sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            say(sc.get("runAsNonRoot") is True and sc.get("capabilities", {}).get("drop") == ["ALL"],
                f"{where}: non-root, no capabilities")
say(len(images) == 1, f"one flowlens image for every workload ({sorted(images)})")
sa_enricher = by_kind["Deployment"]["flowlens-enricher"]["spec"]["template"]["spec"].get("serviceAccountName")
binding = by_kind["ClusterRoleBinding"]["flowlens-enricher"]
say(any(s["name"] == sa_enricher for s in binding["subjects"]), f"enricher's service account {sa_enricher} is bound")
rules = by_kind["ClusterRole"]["flowlens-enricher"]["rules"]
verbs = {v for r in rules for v in r["verbs"]}
say(verbs <= {"get", "list", "watch"}, f"enricher ClusterRole is read-only ({sorted(verbs)})")
EOF
cat "$TMP/k8s.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/k8s.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/k8s.out")))

# ---------------------------------------------------------------------------------------------
log "Grafana dashboards (queries run on the chdb front with sql/migrations applied)"
CHDB_URL=
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import chdb' 2>/dev/null; then
  CH_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$VENV/bin/python" -u scripts/stack/chdb_http.py --data-dir "$TMP/chdb" --host 127.0.0.1 \
    --port "$CH_PORT" >"$TMP/chdb.log" 2>&1 &
  CHDB_PID=$!
  trap 'kill "$CHDB_PID" 2>/dev/null; wait "$CHDB_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
  for _ in $(seq 1 150); do
    [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$CH_PORT/ping" 2>/dev/null)" = "Ok." ] && break
    sleep 0.2
  done
  # The migrations as the sink applies them (statements separated by a line holding only ';'),
  # plus one row so that every query has data to chew on.
  if "$PY" - "$CH_PORT" <<'EOF' >"$TMP/migrate.out" 2>&1
import glob, re, sys, urllib.request
port = sys.argv[1]
def q(sql):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=sql.encode(), method="POST")
    return urllib.request.urlopen(req, timeout=60).read().decode()
for path in sorted(glob.glob("sql/migrations/*.sql")):
    for stmt in re.split(r"(?m)^;\s*$", open(path).read()):
        if re.sub(r"(?m)--.*$", "", stmt).strip():
            q(stmt)
q("INSERT INTO flows (time_flow_start, time_flow_end, time_exported, host, if_name, direction, "
  "proto, src_addr, dst_addr, src_port, dst_port, tcp_flags, packets, bytes, src_pod, "
  "src_namespace, src_workload, dst_pod, dst_namespace, dst_workload) VALUES (now64(9), now64(9), "
  "now64(9), 'node-1', 'eth0', 'egress', 6, '::ffff:10.0.0.1', '::ffff:10.0.0.2', 40000, 443, 18, "
  "10, 1500, 'a-1', 'shop', 'a', 'b-1', 'shop', 'b')")
assert q("SELECT count() FROM flows").strip() == "1"
EOF
  then
    ok "chdb front on :$CH_PORT with sql/migrations applied"
    CHDB_URL=http://127.0.0.1:$CH_PORT
    # Negative control: a column the table does not have is an error there.
    if curl -fsS --max-time 20 "$CHDB_URL/" --data-binary 'SELECT no_such_column FROM flows' \
        >/dev/null 2>&1; then
      bad "chdb front accepted a query on a missing column: the dashboard check would prove nothing"
    else
      ok "chdb front rejects a query on a missing column (negative control)"
    fi
  else
    bad "chdb front / migrations:"$'\n'"$(tail -5 "$TMP/migrate.out") $(tail -5 "$TMP/chdb.log")"
  fi
else
  skip "no chdb in $VENV: dashboard queries not run (scripts/setup.sh installs it)"
fi
"$PY" deploy/grafana/check_dashboards.py ${CHDB_URL:+--clickhouse "$CHDB_URL"} >"$TMP/dash.out" 2>&1
cat "$TMP/dash.out"
PASS=$((PASS + $(grep -c '^  ok ' "$TMP/dash.out")))
FAIL=$((FAIL + $(grep -c '^  FAIL ' "$TMP/dash.out")))
SKIP=$((SKIP + $(grep -c '^  skip ' "$TMP/dash.out")))

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
for needed in ["Cargo.toml", "Cargo.lock", "sql/migrations", "schemas/avro", "collector-ebpf/src",
               "bench/Cargo.toml", "bench/src"]:
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
  for d in "${CARGO_TARGET_DIR:-target}/debug" "${CARGO_TARGET_DIR:-target}/release"; do
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

    if [ -s "$TMP/k8s.$stage.toml" ]; then
      run_loader "$stage" "flowlens-$stage --config <deploy/kubernetes ConfigMap $stage.toml>" ok \
        "${fail_fast[@]}" -- --config "$TMP/k8s.$stage.toml"
    fi

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
