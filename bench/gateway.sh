#!/usr/bin/env bash
# One run, one CPU layout, one load generator: a bare upstream, keyward in
# front of it, and nginx in front of it with a hand-rolled key check (keys in
# a `map`, one `if` per route: what teams write instead of a product).
#
#   bash bench/gateway.sh                 # SQLite (default)
#   DURATION=20 CONNECTIONS=64 bash bench/gateway.sh
#   KEYWARD_BENCH_DATABASE=postgres://... bash bench/gateway.sh
#
# Every server runs on core 1 (taskset -c 1), wrk on core 0. Prints req/s,
# p50 and p99 per scenario and the ratios the issue asks for. Needs wrk and
# nginx (Debian: apt-get install wrk nginx). Quote the ratios, not the
# absolute numbers: the machines are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
SERVER_CORE="${SERVER_CORE:-1}"
LOAD_CORE="${LOAD_CORE:-0}"
UP_PORT=19101
KW_PORT=19102
NGINX_PORT=19103
# nginx with auth_request asking keyward (docs/proxies/nginx.conf as is).
AUTH_PORT=19104

for tool in wrk nginx taskset; do
  command -v "$tool" >/dev/null || { echo "bench/gateway.sh needs $tool (apt-get install wrk nginx util-linux)" >&2; exit 2; }
done

echo "== building (release)"
cargo build --release -q -p keyward
cargo build --release -q -p keyward-server --example bench_upstream
BIN=target/release/keyward
UPSTREAM=target/release/examples/bench_upstream

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${KEEP_WORK:-}" ] && trap "for p in \"\${PIDS[@]}\"; do kill \"\$p\" 2>/dev/null; done; echo kept \"$WORK\"" EXIT

export KEYWARD_DATABASE_URL="${KEYWARD_BENCH_DATABASE:-sqlite://$WORK/bench.db}"
unset KEYWARD_CATALOG KEYWARD_ORG

key_of() { "$BIN" keys create --json "$@" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], " ".join(d["effective_scopes"]))'; }
"$BIN" migrate >/dev/null
read -r RO_KEY RO_SCOPES <<<"$(key_of --name bench-reader --preset read-only-integration)"
read -r RW_KEY RW_SCOPES <<<"$(key_of --name bench-writer --preset inspection-submission)"
read -r VERIFIER_KEY _ <<<"$(key_of --name bench-verifier --scope keyward-api-keys:verify)"
# A snapshot that is not trivially small: 10 000 more keys (legacy import is
# the fast way to add many through the CLI).
python3 - "$WORK/legacy.txt" <<'EOF'
import secrets, sys
with open(sys.argv[1], "w") as f:
    for i in range(10_000):
        f.write(f"legacy_{secrets.token_hex(16)} imported-{i}\n")
EOF
"$BIN" keys import-legacy "$WORK/legacy.txt" >/dev/null 2>&1

wait_port() {
  for _ in $(seq 1 200); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2; exit 1
}

taskset -c "$SERVER_CORE" "$UPSTREAM" "127.0.0.1:$UP_PORT" >/dev/null &
PIDS+=($!)
wait_port "$UP_PORT"

KEYWARD_LOG=warn taskset -c "$SERVER_CORE" "$BIN" serve --listen "127.0.0.1:$KW_PORT" \
  --upstream "http://127.0.0.1:$UP_PORT" >"$WORK/keyward.out" 2>&1 &
PIDS+=($!)
wait_port "$KW_PORT"

# nginx: the hand-rolled check. One map from the Authorization header to a key
# id, one map per scope a route needs, one `if` per check.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  map_hash_bucket_size 128;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream api { server 127.0.0.1:$UP_PORT; keepalive 128; }
  map \$http_authorization \$key_id {
    default "";
    "Bearer $RO_KEY" "key_reader";
    "Bearer $RW_KEY" "key_writer";
  }
  map \$http_authorization \$org_id {
    default "";
    "Bearer $RO_KEY" "org_bench";
    "Bearer $RW_KEY" "org_bench";
  }
  map \$http_authorization \$scopes {
    default "";
    "Bearer $RO_KEY" "$RO_SCOPES";
    "Bearer $RW_KEY" "$RW_SCOPES";
  }
  map \$http_authorization \$can_vehicles_read {
    default 0;
    "Bearer $RO_KEY" 1;
    "Bearer $RW_KEY" 1;
  }
  map \$http_authorization \$can_inspections_write {
    default 0;
    "Bearer $RW_KEY" 1;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    default_type application/json;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "";
    # The same identity and forwarding headers keyward sends, so the upstream
    # parses the same request from both.
    proxy_set_header X-Keyward-Key-Id \$key_id;
    proxy_set_header X-Keyward-Org-Id \$org_id;
    proxy_set_header X-Keyward-Scopes \$scopes;
    proxy_set_header X-Request-Id \$request_id;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$http_host;
    location ~ ^/api/third-party/v1/vehicles(/[^/]+)?\$ {
      if (\$key_id = "") { return 401 '{"errors":[{"code":"UNAUTHORIZED","message":"Invalid API key"}]}'; }
      if (\$can_vehicles_read = 0) { return 403 '{"errors":[{"code":"FORBIDDEN","message":"Insufficient permissions"}]}'; }
      proxy_pass http://api;
    }
    location ~ ^/api/third-party/v1/inspections {
      if (\$key_id = "") { return 401 '{"errors":[{"code":"UNAUTHORIZED","message":"Invalid API key"}]}'; }
      if (\$can_inspections_write = 0) { return 403 '{"errors":[{"code":"FORBIDDEN","message":"Insufficient permissions"}]}'; }
      proxy_pass http://api;
    }
    location / { return 404 '{"errors":[{"code":"NOT_FOUND","message":"No route"}]}'; }
  }
  include $WORK/nginx/forward-auth.conf;
}
EOF
sed -e "s/127.0.0.1:8080/127.0.0.1:$KW_PORT/" -e "s/127.0.0.1:3000/127.0.0.1:$UP_PORT/" \
  -e "s/listen 8000;/listen 127.0.0.1:$AUTH_PORT;/" docs/proxies/nginx.conf >"$WORK/nginx/forward-auth.conf"
taskset -c "$SERVER_CORE" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port "$NGINX_PORT"
wait_port "$AUTH_PORT"

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"vehicle_id":42,"passed":true}'
wrk.headers["Content-Type"] = "application/json"
EOF
cat >"$WORK/verify.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"key":"$RO_KEY","method":"GET","path":"/vehicles"}'
wrk.headers["Content-Type"] = "application/json"
EOF

# run NAME URL (wrk flags in WRK_ARGS) -> "req/s p50 p99 non2xx" in $WORK/NAME
run() {
  local name="$1" url="$2"
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${WRK_ARGS[@]}" "$url" >"$WORK/$name.wrk"
  python3 - "$WORK/$name.wrk" "$name" <<'EOF' >"$WORK/$name"
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = int(non2xx.group(1)) if non2xx else 0
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {errors}")
EOF
  read -r rps p50 p99 errors <"$WORK/$name"
  printf '%-34s %10s req/s   p50 %7s ms   p99 %7s ms   non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "$errors"
}

echo "== load: wrk -t1 -c$CONNECTIONS -d${DURATION}s on core $LOAD_CORE; servers on core $SERVER_CORE"
# The one-hop scenarios run ROUNDS times, interleaved, and each keeps its
# median round (by req/s): one noisy round cannot decide a ratio.
# Within a round, each ratio's two scenarios run back to back (bare, verify;
# nginx GET, keyward GET; keyward GET, audited POST), so the machine's drift
# has the least time to come between them.
for r in $(seq 1 "$ROUNDS"); do
  WRK_ARGS=()
  run "bare_upstream_$r" "http://127.0.0.1:$UP_PORT/api/third-party/v1/vehicles"
  WRK_ARGS=(-H "Authorization: Bearer $VERIFIER_KEY" -s "$WORK/verify.lua")
  run "keyward_verify_$r" "http://127.0.0.1:$KW_PORT/v1/verify"
  WRK_ARGS=(-H "Authorization: Bearer $RO_KEY")
  run "nginx_map_get_$r" "http://127.0.0.1:$NGINX_PORT/api/third-party/v1/vehicles"
  run "keyward_get_$r" "http://127.0.0.1:$KW_PORT/api/third-party/v1/vehicles"
  run "nginx_auth_request_get_$r" "http://127.0.0.1:$AUTH_PORT/api/third-party/v1/vehicles"
  # The audited POST in the same rounds, so its ratio to keyward's GET is
  # paired like the others (it swings with the disk's fsync latency).
  WRK_ARGS=(-H "Authorization: Bearer $RW_KEY" -s "$WORK/post.lua")
  run "keyward_audited_post_$r" "http://127.0.0.1:$KW_PORT/api/third-party/v1/inspections"
  run "nginx_map_post_$r" "http://127.0.0.1:$NGINX_PORT/api/third-party/v1/inspections"
done
median() { for r in $(seq 1 "$ROUNDS"); do cat "$WORK/$1_$r"; done | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p" >"$WORK/$1"; }
for name in bare_upstream nginx_map_get keyward_get nginx_auth_request_get keyward_verify keyward_audited_post nginx_map_post; do median "$name"; done
# Paired ratios: each round's pair ran back to back, so their ratio cancels
# most of the machine's drift; the median of those is the headline.
paired() {
  python3 - "$WORK" "$ROUNDS" "$1" "$2" "$3" <<'EOF'
import statistics, sys
work, rounds, a, b, col = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ratios = []
for r in range(1, rounds + 1):
    x = float(open(f"{work}/{a}_{r}").read().split()[col])
    y = float(open(f"{work}/{b}_{r}").read().split()[col])
    ratios.append(x / y)
print(f"{statistics.median(ratios):.2f} (rounds: {' '.join(f'{v:.2f}' for v in ratios)})")
EOF
}
echo "== ratios (targets in brackets; medians of $ROUNDS paired rounds)"
echo "keyward GET / nginx GET req/s        $(paired keyward_get nginx_map_get 0)   [>= 1.0]"
echo "keyward GET p99 / nginx GET p99      $(paired keyward_get nginx_map_get 2)   [<= 1.5]"
echo "keyward GET / bare upstream          $(paired keyward_get bare_upstream 0)   [ceiling ~0.33 on one shared core]"
echo "nginx GET / bare upstream            $(paired nginx_map_get bare_upstream 0)"
echo "verify / bare upstream               $(paired keyward_verify bare_upstream 0)   [>= 0.7]"
echo "audited POST / keyward GET           $(paired keyward_audited_post keyward_get 0)   [>= 0.5]"
echo "nginx POST / nginx GET               $(paired nginx_map_post nginx_map_get 0)"
echo "nginx+auth_request / nginx GET       $(paired nginx_auth_request_get nginx_map_get 0)   [forward auth: keyward asked per request]"
echo "nginx+auth_request / keyward GET     $(paired nginx_auth_request_get keyward_get 0)"
echo "nginx+auth_request p99 / keyward p99 $(paired nginx_auth_request_get keyward_get 2)"
AUDITED="$(curl -s "http://127.0.0.1:$KW_PORT/metrics" | awk '/^keyward_audit_records_total/ {r=$2} /^keyward_audit_transactions_total/ {t=$2} END {if (t>0) printf "%d records in %d transactions (%.1f per commit)", r, t, r/t}')"
echo "audit group commit: $AUDITED"
