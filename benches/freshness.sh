#!/usr/bin/env bash
# The fresh lake's numbers: how long a record takes from its send to a snapshot of its topic's
# Iceberg table (freshness, as a distribution), how many objects that costs, and what it costs
# produce. For each round, on a fresh broker with the default segment settings (1 GiB, 7 days):
#
#   fresh-1mb     `loadgen freshness` at 1 MB/s for RUN_S seconds, lake.target.lag.ms=LAG_MS
#   fresh-50mb    the same at 50 MB/s
#   sealed-50mb   a produce paced at 50 MB/s for RUN_S seconds with fresh pieces off
#                 (lake.target.lag.ms=-1): the broker's CPU and objects without them
#   produce-sealed / produce-fresh   an unpaced 3 GB produce (1 KiB records, 6 partitions) with
#                 fresh pieces off (lake.target.lag.ms=-1: sealed files only) and on
#                 (PRODUCE_LAG_MS, 2000: several pieces per partition while it runs)
#
# with the broker's CPU-seconds (utime + stime) and its lake counters (/metrics: sealed uploads,
# fresh pieces, table commits) around each run. Prints one JSON line per run, then a table.
#
#   benches/freshness.sh                       # LAG_MS=10000 RUN_S=120 ROUNDS=1, every run
#   LAG_MS=60000 RUN_S=300 RUNS="fresh-1mb fresh-50mb" benches/freshness.sh
#
# Needs the Rust toolchain; uses temporary folders, a file:// lake and ports 19196/19197.
set -euo pipefail
cd "$(dirname "$0")/.."

LAG_MS=${LAG_MS:-10000}
RUN_S=${RUN_S:-120}
ROUNDS=${ROUNDS:-1}
PARTITIONS=${PARTITIONS:-6}
SIZE=1024
PRODUCE_RECORDS=${PRODUCE_RECORDS:-3000000}
PRODUCE_LAG_MS=${PRODUCE_LAG_MS:-2000}
RUNS=${RUNS:-fresh-1mb fresh-50mb sealed-50mb produce}
PORT=19196
METRICS_PORT=19197
cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
STRATA=target/release/strata
LOADGEN=target/release/loadgen
WORK=$(mktemp -d /tmp/strata-freshness.XXXXXX)
RESULTS=$WORK/results.jsonl
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
ticks=$(getconf CLK_TCK)
cpu_s() {
  awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"
}
counter() { # a counter's value from /metrics (0 when absent)
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v m="$1_total" '$1 == m { v = $2 } END { printf "%d", v + 0 }'
}
start_broker() {
  rm -rf "$WORK/data" "$WORK/lake"
  mkdir -p "$WORK/lake"
  sync
  [ -w /proc/sys/vm/drop_caches ] && echo 1 >/proc/sys/vm/drop_caches
  RUST_LOG=warn "$STRATA" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    --tier-url "file://$WORK/lake" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --set log.local.retention.bytes=0 >"$WORK/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
    sleep 0.1
  done
  echo "the broker did not start:" >&2
  tail -5 "$WORK/log" >&2
  exit 1
}
stop_broker() {
  kill "$pid"
  wait "$pid" || true
}
# label, lag, loadgen arguments...: runs loadgen, adds the broker's CPU and lake counters.
run() {
  local label=$1 lag=$2
  shift 2
  local cpu0 sealed0 pieces0 commits0 out
  cpu0=$(cpu_s "$pid")
  sealed0=$(counter strata_lake_uploads)
  pieces0=$(counter strata_lake_fresh_pieces)
  commits0=$(counter strata_lake_table_commits)
  out=$("$LOADGEN" "$@" --brokers "127.0.0.1:$PORT" --partitions "$PARTITIONS" --size "$SIZE" \
    --topic "$label" --topic-config "lake.target.lag.ms=$lag" --json)
  # The offload of the run's last records finishes within a lag and a pass.
  if [ "$lag" -ge 0 ]; then sleep $((lag / 1000 + 2)); fi
  printf '%s\n' "$out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
label, lag, cpu0, cpu1, s0, s1, p0, p1, c0, c1 = sys.argv[1:]
r.update(label=label, lag_ms=int(lag), broker_cpu_s=round(float(cpu1) - float(cpu0), 2),
         sealed_uploads=int(s1) - int(s0), fresh_pieces_committed=int(p1) - int(p0),
         table_commits=int(c1) - int(c0))
print(json.dumps(r))' "$label" "$lag" "$cpu0" "$(cpu_s "$pid")" \
    "$sealed0" "$(counter strata_lake_uploads)" "$pieces0" "$(counter strata_lake_fresh_pieces)" \
    "$commits0" "$(counter strata_lake_table_commits)" | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for what in $RUNS; do
    start_broker
    case $what in
      fresh-1mb) run "fresh-1mb-$round" "$LAG_MS" freshness --tier-url "file://$WORK/lake" \
        --rate-mb 1 --count $((1000000 * RUN_S / SIZE)) ;;
      fresh-50mb) run "fresh-50mb-$round" "$LAG_MS" freshness --tier-url "file://$WORK/lake" \
        --rate-mb 50 --count $((50000000 * RUN_S / SIZE)) ;;
      sealed-50mb) run "sealed-50mb-$round" -1 produce --pace-mb 50 \
        --count $((50000000 * RUN_S / SIZE)) ;;
      produce) run "produce-sealed-$round" -1 produce --count "$PRODUCE_RECORDS" --acks 1
        stop_broker
        start_broker
        run "produce-fresh-$round" "$PRODUCE_LAG_MS" produce --count "$PRODUCE_RECORDS" --acks 1 ;;
      *) echo "unknown run $what" >&2; exit 2 ;;
    esac
    stop_broker
  done
done

python3 - "$RESULTS" "$PARTITIONS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
partitions = int(sys.argv[2])
print("\n| run | lag ms | MB/s | freshness p50 / p99 / max ms | fresh pieces | sealed files | table commits | pieces per partition per lag | broker CPU s | broker CPU s per GB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    f = r.get("freshness")
    fresh = f"{f['p50_ms']:.0f} / {f['p99_ms']:.0f} / {f['max_ms']:.0f}" if f else "-"
    mb = r.get("produced_mb_per_s", r.get("mb_per_s", 0))
    gb = r["records"] * r["record_bytes"] / 1e9
    seconds = r["seconds"]
    lags = seconds * 1000 / r["lag_ms"] if r["lag_ms"] > 0 and f else 0
    per_lag = f"{r['fresh_pieces_committed'] / partitions / lags:.2f}" if lags else "-"
    print(f"| {r['label']} | {r['lag_ms']} | {mb:.1f} | {fresh} | {r['fresh_pieces_committed']} | "
          f"{r['sealed_uploads']} | {r['table_commits']} | {per_lag} | {r['broker_cpu_s']:.1f} | {r['broker_cpu_s'] / gb:.2f} |")
EOF
