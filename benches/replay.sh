#!/usr/bin/env bash
# Replay throughput: the same history read from local segments and from the lake (cold and warm
# read cache, one consumer and several), with the load generator. Prints one JSON line per run
# and a Markdown table at the end.
#
#   benches/replay.sh                     # 1,000,000 records of 1 KiB, 6 partitions, file:// lake
#   RECORDS=2000000 TIER_URL=s3://bucket/lake benches/replay.sh   # (AWS_* variables for S3)
#
# Needs: the Rust toolchain. Uses a temporary data folder and port 19092 unless PORT is set.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-6}
CONSUMERS=${CONSUMERS:-4}
PORT=${PORT:-19092}
DATA=$(mktemp -d /tmp/strata-replay.XXXXXX)
TIER_URL=${TIER_URL:-file://$DATA/lake}
BROKER=127.0.0.1:$PORT
RESULTS=$DATA/results.jsonl

cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
STRATA=target/release/strata
LOADGEN=target/release/loadgen

pid=
start_broker() {
  RUST_LOG=warn "$STRATA" serve --data-dir "$DATA/data" --listen "$BROKER" --tier-url "$TIER_URL" \
    --set log.segment.bytes=67108864 --set log.local.retention.bytes=0 \
    --set log.retention.check.interval.ms=1000 --set lake.read.cache.bytes=4294967296 \
    >>"$DATA/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
    sleep 0.1
  done
  echo "the broker did not start; see $DATA/broker.log" >&2
  exit 1
}
stop_broker() {
  kill "$pid"
  wait "$pid" || true
}
drop_page_cache() {
  sync
  if echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then echo yes; else echo no; fi
}
trap 'kill $pid 2>/dev/null || true' EXIT

run() { # label, loadgen arguments...
  local label=$1
  shift
  "$LOADGEN" "$@" --brokers "$BROKER" --partitions "$PARTITIONS" --count "$RECORDS" --size "$SIZE" --json |
    sed "s/^{/{\"label\":\"$label\",/" | tee -a "$RESULTS"
}

start_broker
run produce-tiered produce --topic replay
run produce-local produce --topic local --topic-config remote.storage.enable=false
# Wait until every sealed segment of the tiered topic is in the lake and deleted locally.
for i in $(seq 1 600); do
  [ "$(ls "$DATA"/data/topics/replay-*/*.log | wc -l)" -le "$PARTITIONS" ] && break
  [ "$i" = 600 ] && { echo "offload did not finish" >&2; exit 1; }
  sleep 1
done
in_lake=$("$STRATA" lake ls --data-dir "$DATA/data" --tier-url "$TIER_URL" --topic replay --json |
  python3 -c 'import json,sys; print(sum(f["rows"] for p in json.load(sys.stdin) for f in p["files"]))')
echo "records in the lake: $in_lake of $RECORDS" >&2

stop_broker
echo "page cache dropped: $(drop_page_cache)" >&2
start_broker
run local-disk-1 consume --topic local
run local-1 consume --topic local
run lake-cold-1 consume --topic replay
run lake-warm-1 consume --topic replay
run local-$CONSUMERS consume --topic local --consumers "$CONSUMERS"
run lake-warm-$CONSUMERS consume --topic replay --consumers "$CONSUMERS"
stop_broker
echo "page cache dropped: $(drop_page_cache)" >&2
start_broker
run lake-cold-$CONSUMERS consume --topic replay --consumers "$CONSUMERS"
stop_broker

python3 - "$RESULTS" "$in_lake" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nrecords in the lake: {sys.argv[2]}\n")
print("| run | consumers | MB/s per consumer | MB/s total | records/s total | first record ms |")
print("|---|---|---|---|---|---|")
for r in rows:
    cs = r["consumers"]
    if not cs:
        print(f"| {r['label']} | - | - | {r['mb_per_s']:.0f} | {r['records_per_s']:.0f} | - |")
        continue
    per = sum(c["mb_per_s"] for c in cs) / len(cs)
    first = max(c["first_record_ms"] for c in cs)
    print(f"| {r['label']} | {len(cs)} | {per:.0f} | {r['mb_per_s']:.0f} | {r['records_per_s']:.0f} | {first:.0f} |")
EOF
rm -rf "$DATA"
