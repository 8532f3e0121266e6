#!/usr/bin/env bash
# Resident memory of `keyward serve` under a burst of console sign-ins with
# unknown emails (each would cost one argon2id hash: 19 MiB, ~40 ms), each
# from its own loopback address (127.0.0.2 onwards), so the per-address
# sign-in throttle does not hide the cost.
#
#   bash bench/signin.sh                 # this tree's release build
#   bash bench/signin.sh BIN [BIN…]      # each binary in turn, same burst
#   N=100 ROUNDS=3 bash bench/signin.sh OLD_BIN NEW_BIN
#
# Prints, per binary: resident memory after start, the peak during the
# bursts (sampled every 10 ms), after them, and the answers by status.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100}"
ROUNDS="${ROUNDS:-3}"
if [ $# -eq 0 ]; then
  cargo build --release -q -p keyward
  set -- target/release/keyward
fi
W=$(mktemp -d); PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf $W' EXIT
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status 2>/dev/null || echo 0; }
port=19301
for bin in "$@"; do
  db=$W/$port.db
  KEYWARD_DATABASE_URL=sqlite://$db $bin migrate >/dev/null 2>&1
  KEYWARD_DATABASE_URL=sqlite://$db KEYWARD_LOG=warn $bin serve --listen 127.0.0.1:$port >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  start=$(rss $PID); peak=$start
  ( while kill -0 $PID 2>/dev/null; do rss $PID; sleep 0.01; done ) > $W/samples &
  SAMPLER=$!
  : > $W/codes
  for r in $(seq "$ROUNDS"); do
    seq "$N" | xargs -P "$N" -I{} sh -c 'curl -s -o /dev/null -w "%{http_code}\n" \
      --interface 127.0.$(( ($1 + 2) / 250 )).$(( ($1 + 2) % 250 + 1 )) \
      -d "email=nobody-$2-$1@example.com&password=guess$1" \
      http://127.0.0.1:$3/console/sign-in' _ {} "$r" "$port" >> $W/codes
  done
  sleep 1
  after=$(rss $PID)
  kill $SAMPLER 2>/dev/null || true
  peak=$(sort -n $W/samples | tail -n 1)
  codes=$(sort $W/codes | uniq -c | awk '{printf "%s×%s ", $1, $2}')
  printf '%s: RSS %s KiB at start, peak %s KiB, %s KiB after; %s rounds of %s: %s\n' \
    "$bin" "$start" "$peak" "$after" "$ROUNDS" "$N" "$codes"
  kill $PID; wait $PID 2>/dev/null || true; PID=
  port=$((port + 1))
done
