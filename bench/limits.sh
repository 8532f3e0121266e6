#!/usr/bin/env bash
# The cost of limits on the hot path (issue 17): one keyward binary, one
# server, a GET through the gateway with a key holding two limits (so large
# they never refuse) against the same GET with a key holding none, in
# interleaved pairs whose order alternates. Prints per round the req/s of
# each and limited/plain; quote the median.
#
# With DB=postgres (and KEYWARD_TEST_POSTGRES_URL), the server runs on a
# scratch PostgreSQL database, where limits are shared: the limited key is
# then admitted within the node's lease, and exchanged every 100 ms.
#
#   R=9 D=4 bash bench/limits.sh [BIN]
#   DB=postgres KEYWARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
#     R=9 D=4 bash bench/limits.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/keyward}"
[ "$BIN" = target/release/keyward ] && cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
UP=target/release/examples/bench_upstream
W=$(mktemp -d); PIDS=()
PGDB=keyward_bench_limits_$$
cleanup() {
  for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5; rm -rf $W
  [ "${DB:-sqlite}" = postgres ] && psql "$KEYWARD_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
if [ "${DB:-sqlite}" = postgres ]; then
  psql "${KEYWARD_TEST_POSTGRES_URL:?set KEYWARD_TEST_POSTGRES_URL}" -qc "CREATE DATABASE $PGDB" >/dev/null
  export KEYWARD_DATABASE_URL="${KEYWARD_TEST_POSTGRES_URL%/*}/$PGDB"
else
  export KEYWARD_DATABASE_URL="sqlite://$W/l.db"
fi
taskset -c 1 $UP 127.0.0.1:19401 >/dev/null & PIDS+=($!)
$BIN migrate >/dev/null 2>&1
key() { $BIN keys create --json "$@" | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])'; }
PLAIN=$(key --name plain --preset read-only-integration)
LIMITED=$(key --name limited --preset read-only-integration \
  --limit burst=1000000000/1s --limit monthly=1000000000000/30d)
KEYWARD_LOG=warn taskset -c 1 $BIN serve --listen 127.0.0.1:19402 --upstream http://127.0.0.1:19401 >/dev/null 2>&1 & PIDS+=($!)
sleep 1.5
URL=http://127.0.0.1:19402/api/third-party/v1/vehicles
rps() { taskset -c 0 wrk -t1 -c64 -d${D:-6}s -H "Authorization: Bearer $1" $URL | awk '/Requests\/sec/ {print $2}'; }
for r in $(seq 1 ${R:-5}); do
  if [ $((r % 2)) -eq 1 ]; then p=$(rps $PLAIN); l=$(rps $LIMITED)
  else l=$(rps $LIMITED); p=$(rps $PLAIN); fi
  echo "round $r plain $p limited $l ratio $(python3 -c "print(round($l/$p,3))")"
done
