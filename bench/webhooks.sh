#!/usr/bin/env bash
# Webhooks, two figures (issue 19):
#
#   1. The outbox's cost to an audited key creation: POST /v1/keys on an
#      OLD binary (before webhooks), on this tree's binary, and on this
#      tree's binary with a webhook subscribed to key.created (each creation
#      then also queues an outbox row, and the node delivers it), in
#      interleaved rounds; prints keys/s and the ratios to OLD.
#   2. Events delivered per second to a local receiver: a backlog of the
#      keys created above is marked undelivered, a server is started, and
#      the time until the outbox is empty is measured.
#   3. The same three servers' user-space instructions per creation
#      (callgrind; the figure the machine's noise does not move), when
#      valgrind is installed. With a webhook, this includes delivering the
#      event.
#
#   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p keyward)
#   R=5 D=5 bash bench/webhooks.sh /tmp/old-target/release/keyward [NEW_BIN]
#
# SQLite (the default). Servers on core 1, wrk and the receiver on core 0.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: bench/webhooks.sh OLD_BIN [NEW_BIN]}"
NEW="${2:-target/release/keyward}"
cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
UP=target/release/examples/bench_upstream
# DIR=/dev/shm keeps the databases in memory: fsync then costs nothing and
# the figure is the work of the statements, not the disk's weather.
W=$(mktemp -d -p "${DIR:-/tmp}"); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5; rm -rf $W' EXIT
# The receiver: answers every POST 200 at once.
taskset -c 0 $UP 127.0.0.1:19301 >/dev/null & PIDS+=($!)
admin() { # bin url -> a key that may create keys
  KEYWARD_DATABASE_URL=$2 $1 migrate >/dev/null 2>&1
  KEYWARD_DATABASE_URL=$2 $1 keys create --json --name admin --scope keyward-api-keys:write \
    --scope vehicles:read | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])'
}
A_URL="sqlite://$W/old.db"; B_URL="sqlite://$W/new.db"; C_URL="sqlite://$W/hook.db"
AK=$(admin $OLD $A_URL); BK=$(admin $NEW $B_URL); CK=$(admin $NEW $C_URL)
KEYWARD_DATABASE_URL=$C_URL $NEW webhooks create http://127.0.0.1:19301/hook \
  --event key.created --allow-private >/dev/null
serve() { # bin url port [flags]
  local bin=$1 url=$2 port=$3; shift 3
  KEYWARD_DATABASE_URL=$url KEYWARD_LOG=warn taskset -c 1 $bin serve --listen 127.0.0.1:$port "$@" >/dev/null 2>&1 &
  PIDS+=($!)
}
serve $OLD $A_URL 19302
serve $NEW $B_URL 19303
serve $NEW $C_URL 19304 --allow-private-webhooks
sleep 1.5
cat > $W/create.lua <<'L'
wrk.method = "POST"
wrk.body = '{"name":"bench","scopes":["vehicles:read"]}'
wrk.headers["Content-Type"] = "application/json"
L
rps() { taskset -c 0 wrk -t1 -c8 -d${D:-5}s -s $W/create.lua "$@" | awk '/Requests\/sec/ {print $2}'; }
ratio() { python3 -c "print(round($2/$1,3))"; }
echo "== 1. POST /v1/keys (audited creation): keys/s"
for r in $(seq 1 ${R:-5}); do
  # Rotate the order so no binary always runs first.
  case $((r % 3)) in
    0) a=$(rps -H "Authorization: Bearer $AK" http://127.0.0.1:19302/v1/keys)
       b=$(rps -H "Authorization: Bearer $BK" http://127.0.0.1:19303/v1/keys)
       c=$(rps -H "Authorization: Bearer $CK" http://127.0.0.1:19304/v1/keys) ;;
    1) b=$(rps -H "Authorization: Bearer $BK" http://127.0.0.1:19303/v1/keys)
       c=$(rps -H "Authorization: Bearer $CK" http://127.0.0.1:19304/v1/keys)
       a=$(rps -H "Authorization: Bearer $AK" http://127.0.0.1:19302/v1/keys) ;;
    2) c=$(rps -H "Authorization: Bearer $CK" http://127.0.0.1:19304/v1/keys)
       a=$(rps -H "Authorization: Bearer $AK" http://127.0.0.1:19302/v1/keys)
       b=$(rps -H "Authorization: Bearer $BK" http://127.0.0.1:19303/v1/keys) ;;
  esac
  echo "round $r old $a new $b new+webhook $c  new/old $(ratio $a $b)  new+webhook/old $(ratio $a $c)"
done

echo "== 2. events delivered per second (SQLite, one endpoint)"
pending() {
  python3 - "$W/hook.db" <<'P'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
print(c.execute("SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL").fetchone()[0])
P
}
until [ "$(pending)" = 0 ]; do sleep 0.2; done
kill ${PIDS[-1]}; wait ${PIDS[-1]} 2>/dev/null || true
N=$(python3 - "$W/hook.db" <<'P'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
c.execute("UPDATE webhook_outbox SET delivered_at = NULL, attempts = 0")
c.execute("DELETE FROM webhook_attempts")
c.execute("UPDATE webhooks SET failures = 0, failing_since = NULL, next_attempt_at = 0, lease_holder = NULL, lease_until = 0")
c.commit()
print(c.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()[0])
P
)
start=$(date +%s.%N)
serve $NEW $C_URL 19304 --allow-private-webhooks
until [ "$(pending)" = 0 ]; do sleep 0.05; done
end=$(date +%s.%N)
python3 -c "n=$N; t=$end-$start; print(f'{n} events in {t:.2f} s (server start included) = {n/t:.0f} events/s')"

command -v valgrind >/dev/null || { echo "(no valgrind: skipping instructions)"; exit 0; }
echo "== 3. instructions per POST /v1/keys (callgrind, ${DURATION:-5} s each)"
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
for case in old new new+webhook; do
  bin=$NEW; [ $case = old ] && bin=$OLD
  url="sqlite://$W/cg-$case.db"
  key=$(admin $bin $url)
  flags=()
  if [ $case = new+webhook ]; then
    KEYWARD_DATABASE_URL=$url $NEW webhooks create http://127.0.0.1:19301/hook \
      --event key.created --allow-private >/dev/null
    flags=(--allow-private-webhooks)
  fi
  out="$W/cg-$case.out"
  KEYWARD_DATABASE_URL=$url KEYWARD_LOG=warn taskset -c 1 valgrind --tool=callgrind \
    --callgrind-out-file="$out" $bin serve --listen 127.0.0.1:19305 "${flags[@]}" >/dev/null 2>&1 &
  pid=$!; PIDS+=($pid)
  for _ in $(seq 1 240); do curl -s -o /dev/null http://127.0.0.1:19305/healthz && break; sleep 0.5; done
  callgrind_control -z $pid >/dev/null 2>&1
  n=$(taskset -c 0 wrk -t1 -c8 -d${DURATION:-5}s -s $W/create.lua -H "Authorization: Bearer $key" \
    http://127.0.0.1:19305/v1/keys | awk '/requests in/ {print $1}')
  # Let the deliveries of the keys just made finish inside the count.
  sleep 2
  callgrind_control -d $pid >/dev/null 2>&1; sleep 1
  echo "$case: $(( $(total "$out.1") / n )) instructions per creation ($n created)"
  kill $pid; wait $pid 2>/dev/null || true
done
