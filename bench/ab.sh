#!/usr/bin/env bash
# A/B of two keyward binaries in one run: same upstream, same CPU layout
# (servers on core 1, wrk on core 0), interleaved pairs, so the machine's
# drift cancels out. Tells a code change from an environment change.
#
#   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p keyward)
#   bash bench/ab.sh /tmp/old-target/release/keyward            # vs this tree's release build
#   R=7 D=5 bash bench/ab.sh OLD_BIN [NEW_BIN]
#   DB=postgres bash bench/ab.sh OLD_BIN          # each binary on its own scratch
#                                                 # PostgreSQL database (PG=base URL)
#   LIMITS=1 ONLY=get bash bench/ab.sh OLD_BIN    # the reader key holds two limits
#                                                 # never reached (their cost)
#
# Prints, per round, req/s of each binary and new/old for an audited POST,
# POST /v1/verify and a GET through the gateway (ONLY=verify|get|post: one
# of them). Quote the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: bench/ab.sh OLD_BIN [NEW_BIN]}"
NEW="${2:-target/release/keyward}"
cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
UP=target/release/examples/bench_upstream
W=$(mktemp -d); PIDS=()
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
if [ "${DB:-sqlite}" = postgres ]; then
  URL_OLD="$PG/kw_ab_old_$$"; URL_NEW="$PG/kw_ab_new_$$"
  for u in "$URL_OLD" "$URL_NEW"; do psql -q "$PG/postgres" -c "CREATE DATABASE ${u##*/}"; done
  dropdbs() { for u in "$URL_OLD" "$URL_NEW"; do psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS ${u##*/} WITH (FORCE)" || true; done; }
else
  URL_OLD="sqlite://$W/old.db"; URL_NEW="sqlite://$W/new.db"
  dropdbs() { :; }
fi
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; sleep 0.5; dropdbs; rm -rf $W' EXIT
taskset -c 1 $UP 127.0.0.1:19201 >/dev/null & PIDS+=($!)
setup() { # bin url -> prints "reader verifier writer"
  local bin=$1 url=$2
  KEYWARD_DATABASE_URL=$url $bin migrate >/dev/null 2>&1
  local limits=()
  [ -n "${LIMITS:-}" ] && limits=(--limit burst=1000000000/1s --limit monthly=1000000000000/30d)
  r=$(KEYWARD_DATABASE_URL=$url $bin keys create --json --name r --preset read-only-integration "${limits[@]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')
  v=$(KEYWARD_DATABASE_URL=$url $bin keys create --json --name v --scope keyward-api-keys:verify | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')
  w=$(KEYWARD_DATABASE_URL=$url $bin keys create --json --name w --preset inspection-submission | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')
  echo "$r $v $w"
}
read -r OR OV OW <<<"$(setup $OLD $URL_OLD)"
read -r NR NV NW <<<"$(setup $NEW $URL_NEW)"
KEYWARD_DATABASE_URL=$URL_OLD KEYWARD_LOG=warn taskset -c 1 $OLD serve --listen 127.0.0.1:19202 --upstream http://127.0.0.1:19201 >/dev/null 2>&1 & PIDS+=($!)
KEYWARD_DATABASE_URL=$URL_NEW KEYWARD_LOG=warn taskset -c 1 $NEW serve --listen 127.0.0.1:19203 --upstream http://127.0.0.1:19201 >/dev/null 2>&1 & PIDS+=($!)
sleep 1.5
cat > $W/v.lua <<L
wrk.method = "POST"
wrk.body = '{"key":"KEY","method":"GET","path":"/vehicles"}'
wrk.headers["Content-Type"] = "application/json"
L
sed "s/KEY/$OR/" $W/v.lua > $W/vo.lua; sed "s/KEY/$NR/" $W/v.lua > $W/vn.lua
cat > $W/post.lua <<L
wrk.method = "POST"
wrk.body = '{"vehicle_id":42,"passed":true}'
wrk.headers["Content-Type"] = "application/json"
L
rps() { taskset -c 0 wrk -t1 -c64 -d${D:-6}s "$@" | awk '/Requests\/sec/ {print $2}'; }
# ONLY=verify (or get, post) measures one scenario; the pair's order
# alternates between rounds, so neither binary always runs second.
ONLY="${ONLY:-}"
pair() { # round old-args... -- new-args... -> "old new"
  local r=$1; shift
  local a=() b=(); while [ "$1" != -- ]; do a+=("$1"); shift; done; shift; b=("$@")
  if [ $((r % 2)) -eq 1 ]; then o=$(rps "${a[@]}"); n=$(rps "${b[@]}")
  else n=$(rps "${b[@]}"); o=$(rps "${a[@]}"); fi
  echo "$o $n"
}
ratio() { python3 -c "print(round($2/$1,3))"; }
for r in $(seq 1 ${R:-5}); do
  if [ -z "$ONLY" ] || [ "$ONLY" = verify ]; then
    read -r ov nv <<<"$(pair $r -H "Authorization: Bearer $OV" -s $W/vo.lua http://127.0.0.1:19202/v1/verify -- -H "Authorization: Bearer $NV" -s $W/vn.lua http://127.0.0.1:19203/v1/verify)"
    echo "round $r verify old $ov new $nv ratio $(ratio $ov $nv)"
  fi
  if [ -z "$ONLY" ] || [ "$ONLY" = get ]; then
    read -r og ng <<<"$(pair $r -H "Authorization: Bearer $OR" http://127.0.0.1:19202/api/third-party/v1/vehicles -- -H "Authorization: Bearer $NR" http://127.0.0.1:19203/api/third-party/v1/vehicles)"
    echo "round $r GET old $og new $ng ratio $(ratio $og $ng)"
  fi
  if [ -z "$ONLY" ] || [ "$ONLY" = post ]; then
    read -r op np <<<"$(pair $r -H "Authorization: Bearer $OW" -s $W/post.lua http://127.0.0.1:19202/api/third-party/v1/inspections -- -H "Authorization: Bearer $NW" -s $W/post.lua http://127.0.0.1:19203/api/third-party/v1/inspections)"
    echo "round $r POST old $op new $np ratio $(ratio $op $np)"
  fi
done
