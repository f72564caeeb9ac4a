#!/usr/bin/env bash
# Broker CPU per GB produced, and end-to-end latency, for one or two strata binaries side by side
# (for example the tree before and after a change). For each binary and round: a fresh data folder,
# a 1 GB produce (1 KiB records, 6 partitions, acks=1) uncompressed (random bytes) and then lz4
# (JSON-like text, which compresses), each into its own
# topic, the broker's CPU-seconds (utime + stime from /proc/PID/stat) counted around each; then
# an end-to-end run at a steady 50 MB/s (linger 1 ms) for its p99. Prints one JSON line per run.
#
#   benches/cpu.sh                                  # this tree's release build
#   BROKER_BINS="old=/path/to/old/strata new=target/release/strata" ROUNDS=3 benches/cpu.sh
#
# Needs the Rust toolchain; uses temporary folders and port 19195.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
# Which runs: produce, e2e, or both (each on a fresh broker when only one is chosen).
RUNS=${RUNS:-produce e2e}
E2E_RECORDS=${E2E_RECORDS:-500000}
ROUNDS=${ROUNDS:-3}
PORT=19195
LOADGEN=${LOADGEN:-target/release/loadgen}
if [ -z "${BROKER_BINS:-}" ]; then
  cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
  BROKER_BINS="tree=target/release/strata"
fi
WORK=$(mktemp -d /tmp/strata-cpu.XXXXXX)
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
for round in $(seq 1 "$ROUNDS"); do
  for entry in $BROKER_BINS; do
    name=${entry%%=*}
    bin=${entry#*=}
    rm -rf "$WORK/data"
    # Each run starts level: no dirty pages of the previous one being written back meanwhile.
    sync
    [ -w /proc/sys/vm/drop_caches ] && echo 1 >/proc/sys/vm/drop_caches
    "$bin" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" 2>"$WORK/log" &
    pid=$!
    wait_port
    common=(--brokers "127.0.0.1:$PORT" --partitions 6 --size 1024 --json)
    for codec in none lz4; do
      case " $RUNS " in *" produce "*) ;; *) continue ;; esac
      # lz4 runs send JSON-like text: random bytes do not compress, and librdkafka then sends
      # the batch uncompressed.
      text=()
      [ "$codec" = none ] || text=(--text)
      before=$(cpu_s "$pid")
      out=$("$LOADGEN" produce "${common[@]}" --topic "p-$codec" --count "$RECORDS" --acks 1 \
        --compression "$codec" "${text[@]}")
      after=$(cpu_s "$pid")
      gb=$(python3 -c "print($RECORDS * 1024 / 1e9)")
      per_gb=$(python3 -c "print(round(($after - $before) / $gb, 3))")
      echo "$out" | sed "s/^{/{\"label\":\"$name produce $codec round $round\",\"broker_cpu_s_per_gb\":$per_gb,/"
    done
    sync
    case " $RUNS " in *" e2e "*) ;; *) kill "$pid"; wait "$pid" 2>/dev/null || true; continue ;; esac
    out=$("$LOADGEN" e2e "${common[@]}" --topic e2e --count "$E2E_RECORDS" --rate-mb 50 \
      --linger-ms 1 --acks 1)
    echo "$out" | sed "s/^{/{\"label\":\"$name e2e round $round\",/"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
