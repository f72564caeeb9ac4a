#!/usr/bin/env bash
# Partitions per broker: for each partition count, a fresh broker gets topics of at most 10,000
# partitions (a topic's maximum), created by the load generator, which then writes one record of
# 100 bytes into every partition. Measured, with the release binary:
#   - fill: creating the topics and producing one record to each partition;
#   - busy: RSS and open files (`ls /proc/PID/fd | wc -l`) of the broker after that;
#   - stop: SIGTERM to exit (every log closed cleanly), once after the writes and once after the
#     reads (nothing new to force to disk);
#   - start: from exec to accepting connections (the listener is bound once every partition is
#     open, so this is the restart time until the broker answers);
#   - idle: RSS and open files of the restarted broker, and once it has served a read of every
#     partition (`read`: loadgen consume of all the records back).
# Prints one JSON line per count and a Markdown table at the end.
#
#   benches/partitions.sh                      # 1000, 10000 and 20000 partitions
#   COUNTS="5000" benches/partitions.sh
#   SKIP_BUILD=1 benches/partitions.sh         # use the binaries already in target/release
#   SKIP_BUILD=1 STRATA=/path/to/strata benches/partitions.sh   # another build of the broker
#
# Needs: the Rust toolchain. Uses temporary folders and port 19292 unless PORT is set. The
# broker runs under this shell's open-files limit (`ulimit -n`), which it raises to the hard one.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS=${COUNTS:-1000 10000 20000}
PORT=${PORT:-19292}
TOPIC_MAX=10000
WORK=$(mktemp -d /tmp/strata-partitions.XXXXXX)
RESULTS=$WORK/results.jsonl

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q --workspace --bins
fi
STRATA=${STRATA:-target/release/strata}
LOADGEN=${LOADGEN:-target/release/loadgen}

pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
start_broker() { # data folder; sets pid
  STRATA_LOG=warn "$STRATA" serve --data-dir "$1" --listen "127.0.0.1:$PORT" >>"$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 60000); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
    kill -0 "$pid" 2>/dev/null || { echo "the broker exited; see $1.log" >&2; exit 1; }
    sleep 0.005
  done
  echo "the broker did not start; see $1.log" >&2
  exit 1
}
stop_broker() {
  kill -TERM "$pid"
  wait "$pid" || true
}
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status"; }
open_files() { ls "/proc/$pid/fd" | wc -l; }
# Topic names and partition counts adding up to $1, each at most TOPIC_MAX.
topics() {
  local left=$1 i=0
  while [ "$left" -gt 0 ]; do
    local n=$((left < TOPIC_MAX ? left : TOPIC_MAX))
    echo "p$i $n"
    left=$((left - n))
    i=$((i + 1))
  done
}
loadgen() { # mode, topic, partitions
  "$LOADGEN" "$1" --brokers "127.0.0.1:$PORT" --topic "$2" --partitions "$3" --count "$3" \
    --size 100 --acks 1 --json >/dev/null
}

for count in $COUNTS; do
  data=$WORK/data-$count
  start_broker "$data"
  limit=$(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits")
  t=$(now)
  while read -r topic n; do loadgen produce "$topic" "$n"; done < <(topics "$count")
  fill_s=$(elapsed "$t")
  busy_rss=$(rss_mb) busy_files=$(open_files)
  t=$(now)
  stop_broker
  stop_s=$(elapsed "$t")
  t=$(now)
  start_broker "$data"
  start_s=$(elapsed "$t")
  idle_rss=$(rss_mb) idle_files=$(open_files)
  while read -r topic n; do loadgen consume "$topic" "$n"; done < <(topics "$count")
  read_rss=$(rss_mb) read_files=$(open_files)
  t=$(now)
  stop_broker
  idle_stop_s=$(elapsed "$t")
  echo "{\"partitions\":$count,\"open_files_limit\":$limit,\"fill_s\":$fill_s,\"busy_rss_mb\":$busy_rss,\"busy_open_files\":$busy_files,\"stop_s\":$stop_s,\"start_s\":$start_s,\"idle_rss_mb\":$idle_rss,\"idle_open_files\":$idle_files,\"read_rss_mb\":$read_rss,\"read_open_files\":$read_files,\"idle_stop_s\":$idle_stop_s}" |
    tee -a "$RESULTS"
  rm -rf "$data"
done

echo
echo "| partitions | fill | RSS / open files, busy | stop after writes | start (until it answers) | RSS / open files, restarted | RSS / open files, after reading every partition | stop after reads |"
echo "|---|---|---|---|---|---|---|---|"
while read -r line; do
  get() { echo "$line" | sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
  echo "| $(get partitions) | $(get fill_s) s | $(get busy_rss_mb) MB / $(get busy_open_files) | $(get stop_s) s | $(get start_s) s | $(get idle_rss_mb) MB / $(get idle_open_files) | $(get read_rss_mb) MB / $(get read_open_files) | $(get idle_stop_s) s |"
done <"$RESULTS"
