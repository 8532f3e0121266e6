#!/usr/bin/env bash
# Admin operations under load, in one run on one CPU layout:
#   1. create 10 000 keys through POST /v1/keys (CONCURRENCY clients),
#   2. list them all with pagination (pages of 100 and of 500),
#   3. GET /v1/keys/{id} on random ids with wrk: req/s, p50, p99, against
#      GET /healthz on the same server as the baseline (no database).
#
#   bash bench/admin.sh
#   KEYS=2000 CONCURRENCY=4 bash bench/admin.sh
#   KEYWARD_BENCH_DATABASE=postgres://... bash bench/admin.sh
#
# keyward runs on core 1 (taskset -c 1), the clients on core 0. Needs wrk and
# python3. Quote ratios, not absolute numbers: the machines are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS="${KEYS:-10000}"
CONCURRENCY="${CONCURRENCY:-8}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
SERVER_CORE="${SERVER_CORE:-1}"
LOAD_CORE="${LOAD_CORE:-0}"
PORT=19111

for tool in wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "bench/admin.sh needs $tool (apt-get install wrk util-linux python3)" >&2; exit 2; }
done

echo "== building (release)"
cargo build --release -q -p keyward
BIN=target/release/keyward

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export KEYWARD_DATABASE_URL="${KEYWARD_BENCH_DATABASE:-sqlite://$WORK/bench.db}"
unset KEYWARD_CATALOG KEYWARD_ORG
"$BIN" migrate >/dev/null 2>&1
ADMIN="$("$BIN" keys create --json --name bench-admin \
  --scope keyward-api-keys:write --preset full-fleet-management |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"

taskset -c "$SERVER_CORE" "$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/serve.out" 2>"$WORK/serve.log" &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== create $KEYS keys, then page through them ($CONCURRENCY clients on core $LOAD_CORE)"
taskset -c "$LOAD_CORE" python3 - "$PORT" "$ADMIN" "$KEYS" "$CONCURRENCY" "$WORK/ids.txt" <<'EOF'
import http.client, json, sys, threading, time

port, admin, total, conc, ids_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000

lat, ids, errors = [], [], []
lock = threading.Lock()
counter = iter(range(total))

def worker():
    c = http.client.HTTPConnection("127.0.0.1", int(port))
    mine, my_ids = [], []
    for i in counter:
        body = json.dumps({"name": f"bench-{i}", "permission_sets": ["vehicles:read"]})
        t = time.perf_counter()
        c.request("POST", "/v1/keys", body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        mine.append(time.perf_counter() - t)
        if r.status != 201:
            errors.append((r.status, data[:200]))
            continue
        my_ids.append(json.loads(data)["id"])
    with lock:
        lat.extend(mine)
        ids.extend(my_ids)

start = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(conc)]
for t in threads: t.start()
for t in threads: t.join()
took = time.perf_counter() - start
if errors:
    print(f"errors: {len(errors)}, first: {errors[0]}")
    sys.exit(1)
print(f"create: {len(ids)} keys in {took:.1f}s = {len(ids)/took:.0f} keys/s; p50 {pct(lat, .5):.1f} ms, p90 {pct(lat, .9):.1f} ms, p99 {pct(lat, .99):.1f} ms, max {max(lat)*1000:.0f} ms")
with open(ids_path, "w") as f:
    f.write("\n".join(ids))

c = http.client.HTTPConnection("127.0.0.1", int(port))
for size in (100, 500):
    seen, pages, page_lat = 0, 0, []
    cursor = None
    start = time.perf_counter()
    while True:
        path = f"/v1/keys?limit={size}" + (f"&cursor={cursor}" if cursor else "")
        t = time.perf_counter()
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        doc = json.loads(r.read())
        page_lat.append(time.perf_counter() - t)
        seen += len(doc["data"])
        pages += 1
        cursor = doc["next_cursor"]
        if not cursor:
            break
    took = time.perf_counter() - start
    print(f"list (pages of {size}): {seen} keys in {pages} pages, {took:.2f}s; page p50 {pct(page_lat, .5):.1f} ms, p99 {pct(page_lat, .99):.1f} ms")
EOF

cat >"$WORK/show.lua" <<EOF
local ids = {}
for line in io.lines("$WORK/ids.txt") do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/keys/" .. ids[math.random(#ids)], {["Authorization"] = "Bearer $ADMIN"})
end
EOF

run_wrk() { # name, extra args...
  local name="$1"; shift
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" >"$WORK/$name.txt"
  python3 - "$WORK/$name.txt" "$name" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"99%\s+(\S+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{sys.argv[2]}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms" + (f"  ({non2xx.group(1)} non-2xx!)" if non2xx else ""))
open(sys.argv[1] + ".rps", "w").write(str(rps))
EOF
}

echo "== GET /v1/keys/{id} on random ids ($CONNECTIONS connections, ${DURATION}s), baseline GET /healthz"
run_wrk healthz "http://127.0.0.1:$PORT/healthz"
run_wrk show -s "$WORK/show.lua" "http://127.0.0.1:$PORT"
python3 -c "import sys; print(f'ratio GET /v1/keys/{{id}} / GET /healthz: {float(open(sys.argv[1]).read())/float(open(sys.argv[2]).read()):.2f}')" \
  "$WORK/show.txt.rps" "$WORK/healthz.txt.rps"
