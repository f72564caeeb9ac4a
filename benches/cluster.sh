#!/usr/bin/env bash
# A three-broker cluster (replication factor 3) next to a single broker, all on this machine:
#   1. produce throughput and produce p99: single broker acks=1; cluster acks=1 and acks=all
#      (min.insync.replicas=2); end-to-end p99 at a steady rate with acks=all;
#   2. the followers' CPU-seconds per GB they replicated (utime + stime from /proc/PID/stat);
#   3. catch-up: a follower stopped while GB_BEHIND GB are produced, restarted, timed until it is
#      back in the ISR;
#   4. failover: KILLS times, SIGKILL the leader of gaps-0 while `loadgen gaps` produces one
#      acks=all record at a time to it; each kill shows as one gap between acknowledgements
#      (from the last acknowledgement on the old leader to the first on the new one).
# Prints JSON lines; docs/performance.md has the figures and how they were taken.
#
#   benches/cluster.sh                      # this tree's release build
#   RECORDS=200000 KILLS=5 benches/cluster.sh
#
# Needs the Rust toolchain; uses temporary folders and ports 19301-19306 and 19401.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-500000}
E2E_RECORDS=${E2E_RECORDS:-300000}
GB_BEHIND=${GB_BEHIND:-1}
KILLS=${KILLS:-20}
BIN=${BIN:-target/release/strata}
LOADGEN=${LOADGEN:-target/release/loadgen}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
fi
WORK=$(mktemp -d /tmp/strata-cluster.XXXXXX)
declare -A pids
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
port() { echo $((19300 + $1)); }
cport() { echo $((19303 + $1)); }
VOTERS="1@127.0.0.1:$(cport 1),2@127.0.0.1:$(cport 2),3@127.0.0.1:$(cport 3)"
BOOT="127.0.0.1:$(port 1),127.0.0.1:$(port 2),127.0.0.1:$(port 3)"
start() { # start broker $1
  "$BIN" serve --node-id "$1" --data-dir "$WORK/b$1" --listen "127.0.0.1:$(port "$1")" \
    --controller-listen "127.0.0.1:$(cport "$1")" --controller-quorum "$VOTERS" \
    --tier-url "file://$WORK/lake" --set min.insync.replicas=2 2>>"$WORK/b$1.log" &
  pids[$1]=$!
  wait_port "$(port "$1")"
}
describe() { "$LOADGEN" describe --brokers "$BOOT" --topic "$1" --partition "${2:-0}" 2>/dev/null; }
isr_full() { # topic partitions: every partition has 3 in-sync replicas
  for p in $(seq 0 $(($2 - 1))); do
    describe "$1" "$p" | grep -q '"isr":\[[0-9]*,[0-9]*,[0-9]*\]' || return 1
  done
}
wait_isr() {
  for _ in $(seq 1 600); do isr_full "$1" "$2" && return; sleep 0.2; done
  echo "ISR of $1 not full" >&2
  exit 1
}
produce() { # topic acks [extra loadgen args]
  local topic=$1 acks=$2
  shift 2
  "$LOADGEN" produce --brokers "$BOOT" --topic "$topic" --partitions 6 --count "$RECORDS" \
    --size 1024 --acks "$acks" --replication-factor 3 --json "$@"
}

# 1. A single broker, acks=1, as the reference.
mkdir -p "$WORK/single"
"$BIN" serve --data-dir "$WORK/single" --listen 127.0.0.1:19401 2>"$WORK/single.log" &
pids[0]=$!
wait_port 19401
echo "{\"run\":\"single broker acks=1\",\"report\":$("$LOADGEN" produce --brokers 127.0.0.1:19401 \
  --topic single --partitions 6 --count "$RECORDS" --size 1024 --acks 1 --json)}"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
unset 'pids[0]'

# The cluster.
mkdir -p "$WORK/lake"
for b in 1 2 3; do start "$b"; done
for _ in $(seq 1 300); do
  describe_out=$("$LOADGEN" produce --brokers "$BOOT" --topic warmup --partitions 1 --count 1 \
    --size 64 --acks all --replication-factor 3 --json 2>/dev/null) && break
  sleep 0.2
done
for acks in 1 all; do
  topic="rf3-acks-$acks"
  before=()
  for b in 1 2 3; do before[$b]=$(cpu_s "${pids[$b]}"); done
  report=$(produce "$topic" "$acks")
  wait_isr "$topic" 6
  cpu=""
  for b in 1 2 3; do cpu="$cpu\"$b\":$(echo "$(cpu_s "${pids[$b]}") - ${before[$b]}" | bc),"; done
  echo "{\"run\":\"rf3 acks=$acks\",\"broker_cpu_s\":{${cpu%,}},\"report\":$report}"
done
echo "{\"run\":\"rf3 e2e acks=all\",\"report\":$("$LOADGEN" e2e --brokers "$BOOT" --topic rf3-e2e \
  --partitions 6 --count "$E2E_RECORDS" --size 1024 --acks all --replication-factor 3 --json)}"

# 3. Catch-up: broker 3 down while GB_BEHIND GB are produced (acks=1), then timed back in sync.
"$LOADGEN" produce --brokers "$BOOT" --topic catchup --partitions 6 --count 6 --size 64 --acks all \
  --replication-factor 3 --json >/dev/null
wait_isr catchup 6
kill -9 "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
# acks=1: the leaders answer while the ISR still waits for broker 3 to be dropped.
"$LOADGEN" produce --brokers "$BOOT" --topic catchup --partitions 6 --count $((GB_BEHIND * 1000000)) \
  --size 1024 --acks 1 --json >/dev/null
t0=$(date +%s.%N)
start 3
wait_isr catchup 6
t1=$(date +%s.%N)
echo "{\"run\":\"catch-up\",\"gb\":$GB_BEHIND,\"seconds\":$(echo "$t1 - $t0" | bc),\"mb_per_s\":$(echo "$GB_BEHIND * 1000 / ($t1 - $t0)" | bc)}"

# 4. Failover: kill the leader of gaps-0 KILLS times while one record at a time is produced.
"$LOADGEN" produce --brokers "$BOOT" --topic gaps --partitions 1 --count 1 --size 64 --acks all \
  --replication-factor 3 --json >/dev/null
wait_isr gaps 1
"$LOADGEN" gaps --brokers "$BOOT" --topic gaps --seconds $((KILLS * 12 + 10)) >"$WORK/gaps.json" &
gaps_pid=$!
sleep 3
for k in $(seq 1 "$KILLS"); do
  leader=$(describe gaps | sed -E 's/.*"leader":([0-9-]+).*/\1/')
  kill -9 "${pids[$leader]}"
  wait "${pids[$leader]}" 2>/dev/null || true
  sleep 5
  start "$leader"
  wait_isr gaps 1
  sleep 2
done
wait "$gaps_pid"
echo "{\"run\":\"failover\",\"kills\":$KILLS,\"gaps\":$(cat "$WORK/gaps.json")}"
