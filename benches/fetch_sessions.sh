#!/usr/bin/env bash
# Broker CPU per GB consumed by one consumer of few or many partitions, with and without
# incremental fetch sessions (KIP-227). For each broker binary, partition count and round: a fresh
# data folder and broker, then
#   - backlog: RECORDS records of 1 KiB produced (acks=1), then read back whole by one consumer
#     per client in CLIENTS, the broker's CPU-seconds (utime + stime from /proc/PID/stat) counted
#     around each read;
#   - small: the same records read again per client in SMALL_CLIENTS with fetches of at most
#     SMALL_FETCH_BYTES (fetch.max.bytes and max.partition.fetch.bytes), as a consumer keeping up
#     with a live stream gets them: each fetch carries little, so what a fetch costs per partition
#     it names and answers shows;
#   - tail: for each client, a producer paced at RATE_MB MB/s with that consumer keeping up
#     (`loadgen e2e`, TAIL_RECORDS records), the broker's CPU counted around it, less the CPU of
#     the same paced produce alone (counted first, on its own topic): what the consumer cost.
# Clients: `librdkafka` (full fetches: librdkafka has no fetch sessions), `full` (loadgen's own
# fetcher, full fetches), `session` (loadgen's fetcher in a fetch session). A broker without
# sessions gives none, so `session` there is `full`. Prints one JSON line per measurement.
#
#   benches/fetch_sessions.sh                                  # this tree's release build
#   BROKER_BINS="before=/path/to/old/strata after=target/release/strata" benches/fetch_sessions.sh
#   COUNTS="1000" CLIENTS="session" ROUNDS=1 benches/fetch_sessions.sh
#
# Needs the Rust toolchain; uses temporary folders and port 19196 unless PORT is set.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
TAIL_RECORDS=${TAIL_RECORDS:-200000}
RATE_MB=${RATE_MB:-20}
COUNTS=${COUNTS:-6 1000}
CLIENTS=${CLIENTS:-librdkafka full session}
RUNS=${RUNS:-backlog small}
SMALL_CLIENTS=${SMALL_CLIENTS:-full session}
SMALL_FETCH_BYTES=${SMALL_FETCH_BYTES:-65536}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-19196}
TARGET=${CARGO_TARGET_DIR:-target}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
if [ -z "${BROKER_BINS:-}" ]; then
  cargo build --release -q --workspace --bins
  BROKER_BINS="tree=$TARGET/release/strata"
fi
WORK=$(mktemp -d /tmp/strata-sessions.XXXXXX)
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
ticks=$(getconf CLK_TCK)
cpu_s() { # utime + stime of a process, in seconds
  awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"
}
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $PORT; the broker said:" >&2
  tail -5 "$WORK/log" >&2
  exit 1
}
# Prints a JSON line: the loadgen report with a label and the broker's CPU per GB.
measure() { # label, GB, loadgen args...
  local label=$1 gb=$2
  shift 2
  local before after out
  before=$(cpu_s "$pid")
  out=$("$LOADGEN" "$@" --json)
  after=$(cpu_s "$pid")
  local per_gb
  per_gb=$(python3 -c "print(round(($after - $before) / $gb, 3))")
  echo "$out" | sed "s/^{/{\"label\":\"$label\",\"broker_cpu_s\":$(python3 -c "print(round($after - $before, 3))"),\"broker_cpu_s_per_gb\":$per_gb,/"
}
for round in $(seq 1 "$ROUNDS"); do
  for entry in $BROKER_BINS; do
    name=${entry%%=*}
    bin=${entry#*=}
    for partitions in $COUNTS; do
      rm -rf "$WORK/data"
      sync
      "$bin" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" 2>"$WORK/log" &
      pid=$!
      wait_port
      common=(--brokers "127.0.0.1:$PORT" --partitions "$partitions" --size 1024)
      case " $RUNS " in *" backlog "*)
        gb=$(python3 -c "print($RECORDS * 1024 / 1e9)")
        measure "$name produce p$partitions round $round" "$gb" produce "${common[@]}" \
          --topic backlog --count "$RECORDS" --acks 1
        for client in $CLIENTS; do
          measure "$name backlog $client p$partitions round $round" "$gb" consume \
            "${common[@]}" --topic backlog --count "$RECORDS" --client "$client"
        done
        ;;
      esac
      case " $RUNS " in *" small "*)
        gb=$(python3 -c "print($RECORDS * 1024 / 1e9)")
        for client in $SMALL_CLIENTS; do
          measure "$name small $client p$partitions round $round" "$gb" consume \
            "${common[@]}" --topic backlog --count "$RECORDS" --client "$client" \
            --fetch-max-bytes "$SMALL_FETCH_BYTES" --partition-fetch-bytes "$SMALL_FETCH_BYTES" \
            -X "message.max.bytes=$SMALL_FETCH_BYTES"
        done
        ;;
      esac
      case " $RUNS " in *" tail "*)
        gb=$(python3 -c "print($TAIL_RECORDS * 1024 / 1e9)")
        measure "$name paced-produce p$partitions round $round" "$gb" produce "${common[@]}" \
          --topic paced --count "$TAIL_RECORDS" --acks 1 --pace-mb "$RATE_MB"
        for client in $CLIENTS; do
          measure "$name tail $client p$partitions round $round" "$gb" e2e "${common[@]}" \
            --topic "tail-$client" --count "$TAIL_RECORDS" --acks 1 --rate-mb "$RATE_MB" \
            --client "$client"
        done
        ;;
      esac
      kill "$pid"
      wait "$pid" 2>/dev/null || true
    done
  done
done
