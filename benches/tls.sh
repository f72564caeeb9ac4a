#!/usr/bin/env bash
# TLS against plaintext on one broker: the same loadgen produce and consume runs over a PLAINTEXT
# and an SSL listener of one `strata serve` (librdkafka with OpenSSL on the client side, rustls
# with aws-lc-rs on the broker's), ROUNDS rounds, alternating, each run on a topic of its own.
# Prints one JSON line per run and a Markdown table of medians at the end.
#
#   benches/tls.sh
#   RECORDS=2000000 ROUNDS=5 benches/tls.sh
#
#   STRATA=/tmp/strata LOADGEN=/tmp/loadgen benches/tls.sh
#
# Needs: the Rust toolchain and the openssl command (certificates for the run, ECDSA P-256).
# Uses a temporary folder and ports 19292-19293.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-6}
ROUNDS=${ROUNDS:-3}
PLAIN_PORT=19292
SSL_PORT=19293
WORK=$(mktemp -d /tmp/strata-tls.XXXXXX)
RESULTS=$WORK/results.jsonl

# STRATA and LOADGEN name binaries built before (the release build is skipped then).
if [ -z "${STRATA:-}" ] || [ -z "${LOADGEN:-}" ]; then
  cargo build --release -q --workspace
  STRATA=target/release/strata
  LOADGEN=target/release/loadgen
fi

pid=
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
record() { # label, then a JSON object
  echo "$2" | sed "s/^{/{\"label\":\"$1\",/" | tee -a "$RESULTS"
}

# A CA and the broker's certificate for 127.0.0.1; key and chain in one PEM file.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/broker.key" -out "$WORK/broker.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/broker.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/broker.crt" 2>/dev/null
cat "$WORK/broker.key" "$WORK/broker.crt" >"$WORK/broker.pem"

RUST_LOG=warn "$STRATA" serve --data-dir "$WORK/data" \
  --listen "PLAINTEXT://127.0.0.1:$PLAIN_PORT,SSL://127.0.0.1:$SSL_PORT" \
  --set "ssl.keystore.location=$WORK/broker.pem" >>"$WORK/strata.log" 2>&1 &
pid=$!
wait_port "$PLAIN_PORT"
wait_port "$SSL_PORT"

drive() { # label, port, round, then extra loadgen arguments
  local label=$1 port=$2 round=$3
  shift 3
  local common=(--brokers "127.0.0.1:$port" --partitions "$PARTITIONS" --size "$SIZE" --json
    --topic "bench-$label-$round" "$@")
  record "$label produce" "$("$LOADGEN" produce "${common[@]}" --count "$RECORDS" --acks 1)"
  record "$label consume" "$("$LOADGEN" consume "${common[@]}" --count "$RECORDS")"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  drive plaintext "$PLAIN_PORT" "$round"
  drive ssl "$SSL_PORT" "$round" -X security.protocol=ssl -X "ssl.ca.location=$WORK/ca.pem"
done

python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for r in map(json.loads, open(sys.argv[1])):
    runs[r["label"]].append(r["mb_per_s"])
print(f"\nmedians of {sys.argv[2]} rounds\n")
print("| measure | PLAINTEXT MB/s | SSL MB/s | SSL / PLAINTEXT | PLAINTEXT runs | SSL runs |")
print("|---|---|---|---|---|---|")
for mode in ["produce", "consume"]:
    p, s = runs[f"plaintext {mode}"], runs[f"ssl {mode}"]
    mp, ms = statistics.median(p), statistics.median(s)
    spread = lambda v: " / ".join(f"{x:.0f}" for x in sorted(v))
    print(f"| {mode} | {mp:.0f} | {ms:.0f} | {ms/mp:.2f} | {spread(p)} | {spread(s)} |")
EOF
