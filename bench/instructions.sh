#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that does
# not move with the machine's noise (req/s here drifts by ±20 % within
# minutes; the instruction count of the same binary and load repeats to
# within a few per cent, the rest being timers and the change-log poll).
#
#   bash bench/instructions.sh                       # this tree's release build
#   bash bench/instructions.sh OLD_BIN [NEW_BIN]     # two binaries, same load
#   DB=postgres KEYWARD_TEST_POSTGRES_URL=postgres://… bash bench/instructions.sh
#                       # on a scratch PostgreSQL database (limits shared)
#
# Prints instructions per request for each scenario, and the requests served.
#
# For each binary: `keyward serve` runs under callgrind on core 1 in front of
# the bench upstream; after start-up the counters are zeroed, wrk (core 0)
# sends POST /v1/verify for DURATION seconds, the count is dumped and divided
# by the requests wrk completed; then the same for a GET through the gateway,
# for an audited POST (which includes the audit writer's share: the SQLite
# insert and the chain's hashes, divided over the requests), and for a GET
# with a key holding two limits never reached.
# Counts are user-space only (no kernel), and SHA-256 runs in software under
# valgrind (no SHA extensions), which adds about 3 500 instructions per digest
# that real hardware does not spend.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
for tool in valgrind callgrind_annotate callgrind_control wrk taskset; do
  command -v "$tool" >/dev/null || { echo "bench/instructions.sh needs $tool (apt-get install valgrind wrk)" >&2; exit 2; }
done
cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
BINS=("$@")
[ ${#BINS[@]} -eq 0 ] && BINS=(target/release/keyward)
UP=target/release/examples/bench_upstream
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
taskset -c 1 "$UP" 127.0.0.1:19301 >/dev/null & PIDS+=($!)

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
served() { taskset -c 0 wrk -t1 -c16 -d"${DURATION}s" "$@" | awk '/requests in/ {print $1}'; }

for bin in "${BINS[@]}"; do
  if [ "${DB:-sqlite}" = postgres ]; then
    pgdb="keyward_instructions_$$_$RANDOM"
    psql "${KEYWARD_TEST_POSTGRES_URL:?set KEYWARD_TEST_POSTGRES_URL}" -qc "CREATE DATABASE $pgdb" >/dev/null
    export KEYWARD_DATABASE_URL="${KEYWARD_TEST_POSTGRES_URL%/*}/$pgdb"
  else
    export KEYWARD_DATABASE_URL="sqlite://$W/$(basename "$bin")-$RANDOM.db"
  fi
  "$bin" migrate >/dev/null 2>&1
  key() { "$bin" keys create --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
  reader=$(key --name reader --preset read-only-integration)
  writer=$(key --name writer --preset inspection-submission)
  verifier=$(key --name verifier --scope keyward-api-keys:verify)
  limited=$(key --name limited --preset read-only-integration \
    --limit burst=1000000000/1s --limit monthly=1000000000000/30d)
  cat >"$W/verify.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"key":"$reader","method":"GET","path":"/vehicles"}'
wrk.headers["Content-Type"] = "application/json"
EOF
  cat >"$W/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"vehicle_id":42,"passed":true}'
wrk.headers["Content-Type"] = "application/json"
EOF
  out="$W/cg.out"
  KEYWARD_LOG=warn taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" serve --listen 127.0.0.1:19302 --upstream http://127.0.0.1:19301 >"$W/serve.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  for _ in $(seq 1 240); do curl -s -o /dev/null http://127.0.0.1:19302/healthz && break; sleep 0.5; done
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$(served -H "Authorization: Bearer $verifier" -s "$W/verify.lua" http://127.0.0.1:19302/v1/verify)
  callgrind_control -d "$pid" >/dev/null 2>&1; sleep 1
  verify=$(( $(total "$out.1") / n ))
  callgrind_control -z "$pid" >/dev/null 2>&1
  g=$(served -H "Authorization: Bearer $reader" http://127.0.0.1:19302/api/third-party/v1/vehicles)
  callgrind_control -d "$pid" >/dev/null 2>&1; sleep 1
  get=$(( $(total "$out.2") / g ))
  callgrind_control -z "$pid" >/dev/null 2>&1
  p=$(served -H "Authorization: Bearer $writer" -s "$W/post.lua" http://127.0.0.1:19302/api/third-party/v1/inspections)
  callgrind_control -d "$pid" >/dev/null 2>&1; sleep 1
  post=$(( $(total "$out.3") / p ))
  callgrind_control -z "$pid" >/dev/null 2>&1
  l=$(served -H "Authorization: Bearer $limited" http://127.0.0.1:19302/api/third-party/v1/vehicles)
  callgrind_control -d "$pid" >/dev/null 2>&1; sleep 1
  limget=$(( $(total "$out.4") / l ))
  callgrind_control -k "$pid" >/dev/null 2>&1 || true
  wait "$pid" 2>/dev/null || true
  rm -f "$out"*
  if [ "${DB:-sqlite}" = postgres ]; then
    psql "$KEYWARD_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null
  fi
  printf '%-32s verify %6d (%d requests)   GET %6d (%d)   audited POST %6d (%d)   limited GET %6d (%d)\n' \
    "$bin" "$verify" "$n" "$get" "$g" "$post" "$p" "$limget" "$l"
done
