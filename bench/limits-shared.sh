#!/usr/bin/env bash
# Accuracy of limits shared by two nodes on PostgreSQL (issue 17): two
# `keyward serve` on one database, a key limited to REQ per WIN seconds, and
# load far above the limit split between the nodes 50/50, 90/10 and 100/0.
# Prints, per window, the requests accepted and their ratio to the limit
# (the bound: within 10 %, and never above while both reach the database).
# A node cut off from the database is measured by the test
# `a_node_cut_off_from_the_database_keeps_enforcing_its_share`.
#
#   KEYWARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
#     REQ=1000 WIN=10 ROUNDS=2 bash bench/limits-shared.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/keyward}"
[ "$BIN" = target/release/keyward ] && cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
ADMIN="${KEYWARD_TEST_POSTGRES_URL:?set KEYWARD_TEST_POSTGRES_URL}"
DB=keyward_bench_shared_$$
W=$(mktemp -d); PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5
  psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf $W
}
trap cleanup EXIT
psql "$ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
export KEYWARD_DATABASE_URL="${ADMIN%/*}/$DB"
target/release/examples/bench_upstream 127.0.0.1:19411 >/dev/null & PIDS+=($!)
$BIN migrate >/dev/null 2>&1
REQ=${REQ:-1000}; WIN=${WIN:-10}
KEY=$($BIN keys create --json --name shared --preset read-only-integration \
  --limit "burst=$REQ/${WIN}s" | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')
for port in 19412 19413; do
  KEYWARD_LOG=warn $BIN serve --listen 127.0.0.1:$port --upstream http://127.0.0.1:19411 \
    >/dev/null 2>&1 & PIDS+=($!)
done
sleep 2
python3 - "$KEY" "$REQ" "$WIN" "${ROUNDS:-2}" <<'PY'
import http.client, json, sys, threading, time
key, req, win, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ports = (19412, 19413)
def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/healthz"); h = json.loads(c.getresponse().read())
    return h.get("limits", {"nodes": 0})
while not all(health(p)["nodes"] == 2 for p in ports):
    time.sleep(0.2)
def window(tenths_a):
    # Start 150 ms into a window, stop 250 ms before its end.
    now = time.time()
    time.sleep(win - now % win + 0.15)
    end = time.time() + win - 0.4
    ok = [0, 0]; sent = [0]
    lock = threading.Lock()
    def worker(t):
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=5) for p in ports]
        i = t
        while time.time() < end:
            node = 0 if i % 10 < tenths_a else 1
            conns[node].request("GET", "/api/third-party/v1/vehicles",
                                headers={"Authorization": "Bearer " + key})
            r = conns[node].getresponse(); r.read()
            with lock:
                sent[0] += 1
                if r.status == 200: ok[node] += 1
            i += 1
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
    return ok, sent[0]
for tenths in (5, 9, 10):
    for r in range(rounds):
        ok, sent = window(tenths)
        total = sum(ok)
        print(f"{tenths*10}/{100-tenths*10} round {r}: accepted {total} of {req} "
              f"(A {ok[0]}, B {ok[1]}), sent {sent}, ratio {total/req:.3f}", flush=True)
PY
