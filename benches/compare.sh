#!/usr/bin/env bash
# Side-by-side: Strata and Tansu driven by the same load generator on the same machine, next to
# the machine's own limits measured in the same run (sequential disk write with dd, loopback TCP
# with iperf3). Prints one JSON line per run and a Markdown table at the end.
#
#   benches/compare.sh
#   RECORDS=2000000 TANSU=/path/to/tansu benches/compare.sh
#
# Needs: the Rust toolchain; Tansu (`cargo install tansu --features dynostore`, installed into
# target/tansu when missing; about 25 minutes on 2 cores); iperf3 (Debian's package, installed
# when missing and run as root). Uses temporary folders and ports 19192-19194.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-6}
E2E_RATE_MB=${E2E_RATE_MB:-50}
E2E_RECORDS=${E2E_RECORDS:-500000}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/strata-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
STRATA_PORT=19192
TANSU_PORT=19193
IPERF_PORT=19194

cargo build --release -q -p strata -p strata-benches --bin strata --bin loadgen
LOADGEN=target/release/loadgen
if [ -z "${TANSU:-}" ]; then
  TANSU=$(command -v tansu || true)
fi
if [ -z "$TANSU" ]; then
  [ -x target/tansu/bin/tansu ] || cargo install tansu --features dynostore --root target/tansu
  TANSU=target/tansu/bin/tansu
fi
if ! command -v iperf3 >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q iperf3 >/dev/null
fi

pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
stop() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
record() { # label, then a JSON object
  echo "$2" | sed "s/^{/{\"label\":\"$1\",/" | tee -a "$RESULTS"
}
drive() { # broker name, port
  local name=$1 port=$2
  local common=(--brokers "127.0.0.1:$port" --partitions "$PARTITIONS" --size "$SIZE" --json)
  record "$name produce" "$("$LOADGEN" produce "${common[@]}" --topic bench --count "$RECORDS" --acks 1)"
  record "$name consume" "$("$LOADGEN" consume "${common[@]}" --topic bench --count "$RECORDS")"
  # Two consumers at once (one client thread each): what the broker serves beyond one client.
  record "$name consume2" "$("$LOADGEN" consume "${common[@]}" --topic bench --count "$RECORDS" \
    --consumers 2)"
  sync # the latency run starts without the throughput runs' dirty pages being written back
  record "$name e2e" "$("$LOADGEN" e2e "${common[@]}" --topic e2e --count "$E2E_RECORDS" \
    --rate-mb "$E2E_RATE_MB" --linger-ms 1 --acks 1)"
}

# The machine's limits.
sync
dd_out=$(dd if=/dev/zero of="$WORK/dd" bs=1M count=4096 conv=fdatasync 2>&1 | tail -1)
rm -f "$WORK/dd"
disk_mb=$(echo "$dd_out" | python3 -c 'import re,sys
s=sys.stdin.read(); m=re.search(r"([0-9.,]+) s, ([0-9.,]+) ([kMG]B)/s", s)
print(float(m.group(2).replace(",", ".")) * {"kB":1e-3,"MB":1,"GB":1e3}[m.group(3)])')
record "disk write (dd, 4 GiB, fdatasync)" "{\"mb_per_s\":$disk_mb}"
if command -v iperf3 >/dev/null; then
  iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
  pid=$!
  tcp_mb=
  for _ in $(seq 1 100); do # until the server accepts a test
    tcp_mb=$(iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 -J 2>/dev/null | python3 -c 'import json,sys
print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e6)' 2>/dev/null) && break
    sleep 0.1
  done
  stop
  record "loopback TCP (iperf3, 5 s)" "{\"mb_per_s\":$tcp_mb}"
else
  tcp_mb=
  echo "iperf3 missing: no loopback figure" >&2
fi

# Each broker ROUNDS times, alternating, each round on fresh storage; the table takes medians.
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  # Strata on its defaults, data in a temporary folder.
  RUST_LOG=warn target/release/strata serve --data-dir "$WORK/strata" --listen "127.0.0.1:$STRATA_PORT" \
    >>"$WORK/strata.log" 2>&1 &
  pid=$!
  wait_port "$STRATA_PORT"
  drive strata "$STRATA_PORT"
  stop
  rm -rf "$WORK/strata"
  sync
  # Tansu with in-memory storage.
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" --storage-engine memory://tansu/ \
    >>"$WORK/tansu.log" 2>&1 &
  pid=$!
  wait_port "$TANSU_PORT"
  drive tansu "$TANSU_PORT"
  stop
done

python3 - "$RESULTS" "$disk_mb" "${tcp_mb:-0}" "$ROUNDS" "$E2E_RATE_MB" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for r in map(json.loads, open(sys.argv[1])):
    runs[r["label"]].append(r)
disk, tcp, rounds, rate = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
def median(label, get):
    return statistics.median(get(r) for r in runs[label])
def mbs(name, mode):
    return median(f"{name} {mode}", lambda r: r["mb_per_s"])
def p99(name, key):
    return median(f"{name} e2e", lambda r: r[key]["p99_ms"])
def spread(name, mode, get=lambda r: r["mb_per_s"]):
    return " / ".join(f"{v:.0f}" for v in sorted(get(r) for r in runs[f"{name} {mode}"]))
print(f"\nmachine: disk {disk:.0f} MB/s sequential write, loopback TCP {tcp:.0f} MB/s; medians of {rounds} rounds\n")
print("| measure | Strata | Tansu | Strata / Tansu | Strata / machine limit | Strata runs | Tansu runs |")
print("|---|---|---|---|---|---|---|")
s, t = mbs("strata", "produce"), mbs("tansu", "produce")
print(f"| produce MB/s (acks=1, 6 partitions) | {s:.0f} | {t:.0f} | {s/t:.2f} | {s/disk:.2f} of disk | {spread('strata', 'produce')} | {spread('tansu', 'produce')} |")
s, t = mbs("strata", "consume"), mbs("tansu", "consume")
print(f"| consume MB/s (from the start) | {s:.0f} | {t:.0f} | {s/t:.2f} | {s/tcp if tcp else 0:.2f} of loopback | {spread('strata', 'consume')} | {spread('tansu', 'consume')} |")
s, t = mbs("strata", "consume2"), mbs("tansu", "consume2")
print(f"| consume MB/s, 2 consumers at once (total) | {s:.0f} | {t:.0f} | {s/t:.2f} | {s/tcp if tcp else 0:.2f} of loopback | {spread('strata', 'consume2')} | {spread('tansu', 'consume2')} |")
for key, what in [("produce_latency", "produce"), ("end_to_end_latency", "end-to-end")]:
    s, t = p99("strata", key), p99("tansu", key)
    get = lambda r: r[key]["p99_ms"]
    print(f"| {what} p99 ms at {rate} MB/s | {s:.1f} | {t:.1f} | {t/s:.1f}x lower | - | {spread('strata', 'e2e', get)} | {spread('tansu', 'e2e', get)} |")
EOF
