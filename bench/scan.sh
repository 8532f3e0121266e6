#!/usr/bin/env bash
# `keyward scan` speed (issue 20): a generated tree of FILES text files of
# about SIZE bytes each (source-like lines, with `_` and `_live_` decoys
# that are not keys), 10 real keys spread in it and a few binary files;
# prints keyward's own summary (files/s, MB/s) and checks it found the 10.
#
#   FILES=20000 SIZE=10000 bash bench/scan.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/keyward}"
[ "$BIN" = target/release/keyward ] && cargo build --release -q -p keyward
W=$(mktemp -d); trap 'rm -rf $W' EXIT
export KEYWARD_DATABASE_URL="sqlite://$W/k.db"
"$BIN" migrate >/dev/null 2>&1
for i in $(seq 1 10); do
  "$BIN" keys create --json --name "k$i" --scope vehicles:read |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])' >> "$W/keys"
done
python3 - "$W/tree" "$W/keys" "${FILES:-20000}" "${SIZE:-10000}" <<'P'
import os, random, sys
root, keys, files, size = sys.argv[1], open(sys.argv[2]).read().split(), int(sys.argv[3]), int(sys.argv[4])
random.seed(7)
words = ["let", "fn", "self", "user_id", "max_live_count", "_test_", "insp_live_", "return", "value", "config"]
line = lambda: " ".join(random.choice(words) for _ in range(12)) + "\n"
where = set(random.sample(range(files), len(keys)))
k = iter(keys)
for i in range(files):
    d = os.path.join(root, f"d{i % 100}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    body = "".join(line() for _ in range(size // 80))
    if i in where:
        body += f'TOKEN = "{next(k)}"\n'
    with open(os.path.join(d, f"f{i}.rs"), "w") as f:
        f.write(body)
    if i % 1000 == 0:
        with open(os.path.join(d, f"b{i}.bin"), "wb") as f:
            f.write(b"\x00" * size)
P
sync
out=$("$BIN" scan "$W/tree" --json 2>"$W/err" || true)
cat "$W/err" | tail -1
python3 -c 'import json,sys; f=json.loads(sys.argv[1]); print(f"{len(f)} keys found (10 planted)")' "$out"
