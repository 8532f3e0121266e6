#!/usr/bin/env bash
# Two keyward nodes on one PostgreSQL database: revoke 100 keys through node A
# (`POST /v1/keys/{id}/revoke`) and measure how long until node B refuses each
# one. Prints p50 / p99 / max. Target: p99 <= 1 s.
#
#   bash bench/propagation.sh
#   KEYWARD_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test bash bench/propagation.sh
#
# Creates a scratch database through the server at KEYWARD_BENCH_POSTGRES_URL
# (default: the local test server) and drops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL="${KEYWARD_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
KEYS="${KEYS:-100}"
DB="keyward_propagation_$$"
BASE="${ADMIN_URL%/*}"
export KEYWARD_DATABASE_URL="$BASE/$DB"
unset KEYWARD_CATALOG KEYWARD_ORG

echo "== building (release)"
cargo build --release -q -p keyward
BIN=target/release/keyward

psql "$ADMIN_URL" -qc "CREATE DATABASE $DB"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT

"$BIN" migrate >/dev/null
ADMIN_KEY="$("$BIN" keys create --name bench-admin --scope keyward-api-keys:write --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
echo "== creating $KEYS keys"
: >"/tmp/$DB.keys"
for i in $(seq 1 "$KEYS"); do
  "$BIN" keys create --name "k$i" --scope vehicles:read --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"], d["key"])' >>"/tmp/$DB.keys"
done

KEYWARD_LOG=warn "$BIN" serve --listen 127.0.0.1:19121 >/dev/null 2>&1 &
PIDS+=($!)
KEYWARD_LOG=warn "$BIN" serve --listen 127.0.0.1:19122 >/dev/null 2>&1 &
PIDS+=($!)
for port in 19121 19122; do
  until (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
done

echo "== revoking each key through node A, polling node B until it refuses"
python3 - "$ADMIN_KEY" "/tmp/$DB.keys" <<'EOF'
import http.client, sys, time

admin, keys_file = sys.argv[1], sys.argv[2]
keys = [line.split() for line in open(keys_file)]

def status(port, key):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/api/third-party/v1/vehicles", headers={"Authorization": f"Bearer {key}"})
    s = c.getresponse().status
    c.close()
    return s

waits = []
for key_id, key in keys:
    # No upstream: an accepted key gets 502 UPSTREAM_NOT_CONFIGURED, a revoked one 401.
    assert status(19122, key) == 502, "node B should accept the key before revocation"
    c = http.client.HTTPConnection("127.0.0.1", 19121, timeout=5)
    c.request("POST", f"/v1/keys/{key_id}/revoke", headers={"Authorization": f"Bearer {admin}"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    r.read()
    c.close()
    revoked = time.monotonic()
    while status(19122, key) != 401:
        if time.monotonic() - revoked > 10:
            sys.exit(f"node B still accepts {key_id} after 10 s")
        time.sleep(0.005)
    waits.append(time.monotonic() - revoked)

waits.sort()
p = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))]
print(f"revocations: {len(waits)}")
print(f"from node A's 200 until node B refuses: p50 {p(0.50)*1000:.0f} ms   p99 {p(0.99)*1000:.0f} ms   max {waits[-1]*1000:.0f} ms   [p99 <= 1000 ms]")
EOF
rm -f "/tmp/$DB.keys"
