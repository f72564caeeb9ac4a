#!/usr/bin/env bash
# Transactions against plain idempotent produce, and read_committed against read_uncommitted, on
# one broker (release build). For each round: a fresh data folder; 1 KiB records to 6 partitions
# (RECORDS, default 1,000,000: 1 GB), produced
#   - idempotent (enable.idempotence=true, acks=all) into topic `idem`;
#   - transactional (a transactional.id, a commit every TXN_RECORDS records, default 1,000) into
#     topic `txn`;
# then the `txn` topic consumed from the start with read_uncommitted and with read_committed.
# The broker's CPU-seconds (utime + stime from /proc/PID/stat) are counted around each run.
# Prints one JSON line per run.
#
#   benches/transactions.sh
#   ROUNDS=3 RECORDS=2000000 TXN_RECORDS=1000 benches/transactions.sh
#
# Needs the Rust toolchain; uses temporary folders and port 19196.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
TXN_RECORDS=${TXN_RECORDS:-1000}
ROUNDS=${ROUNDS:-3}
PORT=19196
LOADGEN=${LOADGEN:-target/release/loadgen}
BROKER=${BROKER:-target/release/strata}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
fi
WORK=$(mktemp -d /tmp/strata-txn.XXXXXX)
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
ticks=$(getconf CLK_TCK)
cpu_s() { # utime + stime of a process, in seconds
  awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $PORT; the broker said:" >&2
  tail -5 "$WORK/log" >&2
  exit 1
}
# run LABEL LOADGEN-ARGS...: one loadgen run, its JSON line labelled, with the broker's CPU per GB.
run() {
  local label=$1
  shift
  local before after per_gb out
  before=$(cpu_s "$pid")
  out=$("$LOADGEN" "$@")
  after=$(cpu_s "$pid")
  per_gb=$(python3 -c "print(round(($after - $before) / ($RECORDS * 1024 / 1e9), 3))")
  echo "$out" | sed "s/^{/{\"label\":\"$label\",\"broker_cpu_s_per_gb\":$per_gb,/"
}
for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/data"
  sync
  "$BROKER" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" 2>"$WORK/log" &
  pid=$!
  wait_port
  common=(--brokers "127.0.0.1:$PORT" --partitions 6 --size 1024 --count "$RECORDS" --json)
  run "idempotent produce round $round" produce "${common[@]}" --topic idem --acks all --idempotent
  run "transactional produce (commit every $TXN_RECORDS) round $round" produce "${common[@]}" \
    --topic txn --transaction-records "$TXN_RECORDS"
  sync
  run "read_uncommitted consume round $round" consume "${common[@]}" --topic txn \
    -X isolation.level=read_uncommitted
  run "read_committed consume round $round" consume "${common[@]}" --topic txn \
    -X isolation.level=read_committed
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
