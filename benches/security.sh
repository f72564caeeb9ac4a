#!/usr/bin/env bash
# What metrics, SASL and authorization cost: the same loadgen produce and consume runs against
#   - "plaintext": a broker with a PLAINTEXT listener, no metrics, no authorizer;
#   - "secured":   a broker with a SASL_PLAINTEXT listener (SCRAM-SHA-256), authorizer.enabled=true
#                  with the client's ACLs (it is not a super user: every request is checked against
#                  the bindings), and metrics served on metrics.listen (scraped once a second while
#                  it runs, as a Prometheus server would).
# ROUNDS rounds, alternating, each on a fresh data folder. Prints one JSON line per run and a
# Markdown table of medians. The issue's target: secured ≥ 0.95 × plaintext.
#
#   benches/security.sh
#   RECORDS=2000000 ROUNDS=5 benches/security.sh
#
# Needs the Rust toolchain; uses a temporary folder and ports 19294-19296.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-6}
ROUNDS=${ROUNDS:-3}
PORT=19294
ADMIN_PORT=19295
METRICS_PORT=19296
WORK=$(mktemp -d /tmp/strata-sec.XXXXXX)
RESULTS=$WORK/results.jsonl
STRATA=target/release/strata
LOADGEN=target/release/loadgen

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q --workspace
fi

pid=
scraper=
trap 'kill $pid $scraper 2>/dev/null || true; rm -rf "$WORK"' EXIT
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $1; the broker said:" >&2
  tail -5 "$WORK/strata.log" >&2
  exit 1
}
ticks=$(getconf CLK_TCK)
cpu_s() { # utime + stime of a process, in seconds
  awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"
}
# run LABEL LOADGEN-ARGS...: one loadgen run, its JSON line labelled, with the broker's CPU per GB.
run() {
  local label=$1
  shift
  local before after out per_gb
  before=$(cpu_s "$pid")
  out=$("$LOADGEN" "$@")
  after=$(cpu_s "$pid")
  per_gb=$(python3 -c "print(round(($after - $before) / ($RECORDS * $SIZE / 1e9), 3))")
  echo "$out" | sed "s/^{/{\"label\":\"$label\",\"broker_cpu_s_per_gb\":$per_gb,/" | tee -a "$RESULTS"
}
stop() {
  kill "$pid" $scraper 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  scraper=
}
drive() { # label, round, then extra loadgen arguments
  local label=$1 round=$2
  shift 2
  local common=(--brokers "127.0.0.1:$PORT" --partitions "$PARTITIONS" --size "$SIZE" --json
    --topic "bench-$round" "$@")
  run "$label produce" produce "${common[@]}" --count "$RECORDS" --acks 1
  run "$label consume" consume "${common[@]}" --count "$RECORDS"
}

cat >"$WORK/admin.properties" <<'P'
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-256
sasl.username=admin
sasl.password=admin-secret
P

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  rm -rf "$WORK/data"
  RUST_LOG=warn "$STRATA" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    >>"$WORK/strata.log" 2>&1 &
  pid=$!
  wait_port "$PORT"
  drive plaintext "$round"
  stop

  rm -rf "$WORK/data"
  echo admin-secret | "$STRATA" users add admin --mechanism SCRAM-SHA-256 --password-stdin \
    --data-dir "$WORK/data" >/dev/null
  echo bench-secret | "$STRATA" users add bench --mechanism SCRAM-SHA-256 --password-stdin \
    --data-dir "$WORK/data" >/dev/null
  RUST_LOG=warn "$STRATA" serve --data-dir "$WORK/data" \
    --listen "SASL_PLAINTEXT://127.0.0.1:$PORT,ADMIN://127.0.0.1:$ADMIN_PORT" \
    --set listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,ADMIN:SASL_PLAINTEXT \
    --set inter.broker.listener.name=ADMIN \
    --set sasl.enabled.mechanisms=SCRAM-SHA-256 \
    --set authorizer.enabled=true --set super.users=User:admin \
    --metrics-listen "127.0.0.1:$METRICS_PORT" >>"$WORK/strata.log" 2>&1 &
  pid=$!
  wait_port "$PORT"
  wait_port "$METRICS_PORT"
  admin=(--bootstrap-server "127.0.0.1:$ADMIN_PORT" --command-config "$WORK/admin.properties")
  "$STRATA" acl add "${admin[@]}" --allow-principal User:bench --operation All \
    --topic bench --resource-pattern-type prefixed >/dev/null
  "$STRATA" acl add "${admin[@]}" --allow-principal User:bench --operation Create --cluster \
    >/dev/null
  "$STRATA" acl add "${admin[@]}" --allow-principal User:bench --operation All --group '*' \
    >/dev/null
  (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || true; done) &
  scraper=$!
  drive secured "$round" -X security.protocol=sasl_plaintext -X sasl.mechanisms=SCRAM-SHA-256 \
    -X sasl.username=bench -X sasl.password=bench-secret
  stop
done

python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs, cpu = defaultdict(list), defaultdict(list)
for r in map(json.loads, open(sys.argv[1])):
    runs[r["label"]].append(r["mb_per_s"])
    cpu[r["label"]].append(r["broker_cpu_s_per_gb"])
print(f"\nmedians of {sys.argv[2]} rounds\n")
print("| measure | PLAINTEXT MB/s | secured MB/s | ratio | PLAINTEXT CPU-s/GB | secured CPU-s/GB | PLAINTEXT runs | secured runs |")
print("|---|---|---|---|---|---|---|---|")
for mode in ["produce", "consume"]:
    p, s = runs[f"plaintext {mode}"], runs[f"secured {mode}"]
    mp, ms = statistics.median(p), statistics.median(s)
    cp, cs = statistics.median(cpu[f"plaintext {mode}"]), statistics.median(cpu[f"secured {mode}"])
    spread = lambda v: " / ".join(f"{x:.0f}" for x in sorted(v))
    print(f"| {mode} | {mp:.0f} | {ms:.0f} | {ms/mp:.2f} | {cp:.2f} | {cs:.2f} | {spread(p)} | {spread(s)} |")
EOF
