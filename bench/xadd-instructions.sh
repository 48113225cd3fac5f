#!/usr/bin/env bash
# Userland instructions per pipelined XADD, counted by callgrind: a measure of the XADD path's
# cost that the machine's load does not move (timings on a shared 2-core machine wander by
# 10-20 %; these counts by well under 1 %). The server runs under valgrind; redis-benchmark sends
# a warm-up, the counters are zeroed, N pipelined XADDs are counted, the counters dumped. Prints
# instructions per request for each thread that did real work and for all together.
#   bench/xadd-instructions.sh [BIN] [N]   (needs valgrind, redis-benchmark, redis-cli)
# Kernel time (the sockets, the page cache) is not in these counts, and threads run one at a
# time under valgrind, so batches differ from a real run: compare builds with it, not servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/manifold}
n=${2:-50000}
dir=${MANIFOLD_BENCH_DIR:-target/bench-data}/xadd-instructions
rm -rf "$dir" && mkdir -p "$dir/out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/out/cg.out" \
    "$bin" serve --data-dir "$dir/data" --flush async --resp-addr "127.0.0.1:$port" \
    --mqtt-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 2>"$dir/server.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
redis-benchmark -p "$port" -c 50 -P 16 -n 20000 -q XADD s '*' f v >/dev/null 2>&1
callgrind_control -z "$pid" >/dev/null 2>&1
redis-benchmark -p "$port" -c 50 -P 16 -n "$n" -q XADD s '*' f v >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
python3 - "$dir/out" "$n" <<'PY'
import os, re, sys
out, n = sys.argv[1], int(sys.argv[2])
threads = {}
for f in os.listdir(out):
    if not re.search(r"\.\d+-\d+$", f):
        continue  # the dump at exit, not the one taken around the run
    text = open(os.path.join(out, f), errors="replace").read()
    m = re.search(r"^summary: (\d+)", text, re.M) or re.search(r"^totals: (\d+)", text, re.M)
    if m and int(m.group(1)) > 0:
        threads[f.rsplit("-", 1)[1]] = int(m.group(1))
busy = sorted(threads.items(), key=lambda t: -t[1])
print("instructions per request, by thread:",
      ", ".join(f"#{t} {c / n:.0f}" for t, c in busy if c / n >= 50))
print(f"instructions per request, all threads: {sum(threads.values()) / n:.0f}")
PY
