#!/usr/bin/env bash
# Manifold's RESP front end against Debian's redis-server on the same machine, in the same run:
# redis-benchmark drives each workload at both, and the throughput ratio is printed.
#   durable:   Manifold --flush sync   vs  redis-server --appendonly yes --appendfsync always
#   in memory: Manifold --flush async  vs  redis-server --appendonly no (no persistence)
# Usage: bench/resp-vs-redis.sh [requests-scale]   (needs redis-server, redis-benchmark, taskset)
# Servers run on CPU 0 and redis-benchmark on CPU 1 (taskset; override with SERVER_CPUS and
# CLIENT_CPUS); besides requests/s, each row gives the server's CPU time per request (µs, from
# /proc). Data goes under $MANIFOLD_BENCH_DIR (default target/bench-data): a real disk.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
dir=${MANIFOLD_BENCH_DIR:-target/bench-data}/resp-vs-redis
rm -rf "$dir" && mkdir -p "$dir"
cargo build --release -q -p manifold
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
m_sync=$(port); m_async=$(port); r_always=$(port); r_mem=$(port)
server_cpus=${SERVER_CPUS:-0}
client_cpus=${CLIENT_CPUS:-1}
declare -A pid_of
taskset -c "$server_cpus" ./target/release/manifold serve --data-dir "$dir/sync" \
    --resp-addr "127.0.0.1:$m_sync" --mqtt-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    2>"$dir/sync.log" & pids+=($!); pid_of[$m_sync]=$!
taskset -c "$server_cpus" ./target/release/manifold serve --data-dir "$dir/async" --flush async \
    --resp-addr "127.0.0.1:$m_async" --mqtt-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    2>"$dir/async.log" & pids+=($!); pid_of[$m_async]=$!
taskset -c "$server_cpus" redis-server --port "$r_always" --bind 127.0.0.1 --save '' \
    --appendonly yes --appendfsync always --dir "$dir" --appendfilename always.aof >/dev/null &
pids+=($!); pid_of[$r_always]=$!
taskset -c "$server_cpus" redis-server --port "$r_mem" --bind 127.0.0.1 --save '' \
    --appendonly no >/dev/null & pids+=($!); pid_of[$r_mem]=$!
for p in $m_sync $m_async $r_always $r_mem; do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.2; done
done
# A first start preallocates the log's segments (2 GiB of zeros each): let that finish before
# timing fsyncs.
sleep "${MANIFOLD_BENCH_SETTLE:-20}"
# Server CPU seconds (user + system) so far, from /proc.
cpu() { python3 -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"; }
# "requests/s cpu-µs-per-request" of one run against port $1.
run() {
    local port=$1 n=$2; shift 2
    local c0 c1 r
    c0=$(cpu "${pid_of[$port]}")
    r=$(taskset -c "$client_cpus" redis-benchmark -p "$port" -c "${CLIENTS:-50}" -n "$n" -q "$@" 2>/dev/null \
        | tr '\r' '\n' | grep 'requests per second' | tail -1 \
        | sed -E 's/.* ([0-9.]+) requests per second.*/\1/')
    c1=$(cpu "${pid_of[$port]}")
    python3 -c "print($r, f'{($c1 - $c0) * 1e6 / $n:.1f}')"
}
row() { # name, manifold port, redis port, requests, command...
    local name=$1 mp=$2 rp=$3 n=$(( $4 * scale )); shift 4
    local m r
    read -r m mc <<<"$(run "$mp" "$n" "$@")"
    read -r r rc <<<"$(run "$rp" "$n" "$@")"
    printf '%-34s %11s %11s %6s %9s %9s\n' "$name" "$m" "$r" \
        "$(python3 -c "print(f'{$m/$r:.2f}')")" "$mc" "$rc"
}
printf '%-34s %11s %11s %6s %9s %9s\n' workload manifold/s redis/s ratio 'm cpu-µs' 'r cpu-µs'
row "XADD, 50 clients (durable)"      "$m_sync"  "$r_always" 30000  XADD s '*' f v
row "XADD, 50 clients, P16 (durable)" "$m_sync"  "$r_always" 150000 -P 16 XADD s '*' f v
row "XADD, 50 clients (in memory)"    "$m_async" "$r_mem"    60000  XADD s '*' f v
row "XADD, 50 clients, P16 (in memory)" "$m_async" "$r_mem"  300000 -P 16 XADD s '*' f v
row "XRANGE COUNT 10 (in memory)"     "$m_async" "$r_mem"    60000  XRANGE s - + COUNT 10
row "XREAD COUNT 10 (in memory)"      "$m_async" "$r_mem"    60000  XREAD COUNT 10 STREAMS s 0
row "PING"                            "$m_async" "$r_mem"    100000 PING
CLIENTS=1 row "XADD, 1 client (durable)" "$m_sync" "$r_always" 3000 XADD s1 '*' f v
