#!/usr/bin/env bash
# A million keys on a real `keyward serve`: cold start (process start to
# listening, snapshot loaded), resident memory, and gateway throughput with
# requests spread over 1 000 sampled keys.
#
#   bash bench/million.sh             # KEYS=1000000 by default
#   KEYS=200000 bash bench/million.sh
#
# The seeded database is cached in target/bench-data/ (seeding a million keys
# takes a minute or two); delete it to reseed. Targets: cold start <= 5 s,
# resident memory <= 300 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS="${KEYS:-1000000}"
DURATION="${DURATION:-10}"
UP_PORT=19111
KW_PORT=19112
DATA="target/bench-data"
DB="$DATA/keys-$KEYS.db"
SAMPLE="$DATA/keys-$KEYS.sample"
mkdir -p "$DATA"

echo "== building (release)"
cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
cargo build --release -q -p keyward-app --example seed_keys
BIN=target/release/keyward
unset KEYWARD_CATALOG KEYWARD_ORG KEYWARD_DIGEST_SECRET
export KEYWARD_DATABASE_URL="sqlite://$DB"

if [ ! -s "$SAMPLE" ]; then
  echo "== seeding $KEYS keys into $DB"
  rm -f "$DB" "$DB-wal" "$DB-shm"
  target/release/examples/seed_keys "$KEYWARD_DATABASE_URL" "$KEYS" "$SAMPLE.tmp"
  mv "$SAMPLE.tmp" "$SAMPLE"
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 1 target/release/examples/bench_upstream "127.0.0.1:$UP_PORT" >/dev/null &
PIDS+=($!)

# Drop the page cache's advantage as far as we can without root tricks: read
# the file once so both runs see the same warm cache, then time the start.
cat "$DB" >/dev/null
OUT="$(mktemp)"
START_NS="$(date +%s%N)"
KEYWARD_LOG=warn taskset -c 1 "$BIN" serve --listen "127.0.0.1:$KW_PORT" --upstream "http://127.0.0.1:$UP_PORT" >"$OUT" 2>&1 &
KW=$!
PIDS+=($KW)
until grep -q "listening" "$OUT" 2>/dev/null; do
  kill -0 "$KW" 2>/dev/null || { cat "$OUT"; exit 1; }
  sleep 0.01
done
END_NS="$(date +%s%N)"
echo "== $(cat "$OUT")"
echo "cold start (exec to listening): $(( (END_NS - START_NS) / 1000000 )) ms   [<= 5000]"
grep -E "VmRSS|VmHWM" "/proc/$KW/status" | sed 's/^/after start: /'

# The same start without pinning, for comparison (on this VM, cross-core
# wake-ups between sqlx's worker thread and the runtime make it slower).
OUT2="$(mktemp)"
START_NS="$(date +%s%N)"
KEYWARD_LOG=warn "$BIN" serve --listen "127.0.0.1:$((KW_PORT + 1))" >"$OUT2" 2>&1 &
KW2=$!
until grep -q "listening" "$OUT2" 2>/dev/null; do
  kill -0 "$KW2" 2>/dev/null || { cat "$OUT2"; exit 1; }
  sleep 0.01
done
echo "cold start unpinned (both cores): $(( ($(date +%s%N) - START_NS) / 1000000 )) ms"
kill "$KW2"; wait "$KW2" 2>/dev/null || true

cat >"$DATA/spread.lua" <<EOF
local keys = {}
for line in io.lines("$SAMPLE") do keys[#keys + 1] = "Bearer " .. line end
local i = 0
request = function()
  i = i % #keys + 1
  return wrk.format("GET", "/api/third-party/v1/vehicles", { ["Authorization"] = keys[i] })
end
EOF
if command -v wrk >/dev/null; then
  echo "== wrk -t1 -c64 -d${DURATION}s, requests spread over $(wc -l <"$SAMPLE") keys"
  taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" --latency -s "$DATA/spread.lua" "http://127.0.0.1:$KW_PORT" | grep -E "Requests/sec|50%|99%|Non-2xx"
fi
grep -E "VmRSS|VmHWM" "/proc/$KW/status" | sed 's/^/after load: /'
