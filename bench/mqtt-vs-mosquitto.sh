#!/usr/bin/env bash
# Manifold's MQTT broker against Debian's mosquitto on the same machine, in the same run: the
# load generator (bench/mqtt-load) drives each workload at both, alternating, ROUNDS times, and
# the medians, their ratio and each broker's CPU time per delivered message are printed.
#   Manifold: --flush sync (every PUBLISH acknowledged after fdatasync), the default.
#   mosquitto 2.0: in memory (persistence false), max_queued_messages 0 (unlimited, so an
#   offline session keeps all it missed, as ours does), max_inflight_messages 1024 (our
#   max_inflight), TCP_NODELAY.
# Usage: bench/mqtt-vs-mosquitto.sh [rounds]   (needs mosquitto, taskset, python3)
# Brokers run on CPU 0 and the load generator on CPU 1 (override with SERVER_CPUS and
# CLIENT_CPUS). Data goes under $MANIFOLD_BENCH_DIR (default target/bench-data): a real disk.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
dir=${MANIFOLD_BENCH_DIR:-target/bench-data}/mqtt-vs-mosquitto
rm -rf "$dir" && mkdir -p "$dir"
cargo build --release -q -p manifold -p mqtt-load
load=./target/release/mqtt-load
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
server_cpus=${SERVER_CPUS:-0}
client_cpus=${CLIENT_CPUS:-1}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
m_port=$(port); q_port=$(port)
cat >"$dir/mosquitto.conf" <<EOF
listener $q_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 1024
set_tcp_nodelay true
EOF
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
taskset -c "$server_cpus" ./target/release/manifold serve --data-dir "$dir/manifold" \
    --mqtt-addr "127.0.0.1:$m_port" --resp-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    2>"$dir/manifold.log" & pids+=($!); m_pid=$!
taskset -c "$server_cpus" mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
pids+=($!); q_pid=$!
for p in $m_port $q_port; do
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),1)" 2>/dev/null && break
        sleep 0.2
    done
done
# A first start preallocates the log's segments: let that finish before timing fsyncs.
sleep "${MANIFOLD_BENCH_SETTLE:-20}"
cpu() { python3 -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"; }
# One run: prints the values of the comma-separated KEYS, then the server's CPU µs per
# delivered message.
run() {
    local port=$1 pid=$2 keys=$3; shift 3
    local c0 c1 out args=()
    for a in "$@"; do args+=("${a/BROKER_PID/$pid}"); done
    c0=$(cpu "$pid")
    out=$(taskset -c "$client_cpus" "$load" --addr "127.0.0.1:$port" "${args[@]}")
    c1=$(cpu "$pid")
    echo "$out" >>"$dir/runs.log"
    python3 - "$out" "$keys" "$c0" "$c1" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split())
n = next((float(kv[k]) for k in ("delivered", "replayed", "published") if float(kv.get(k, 0)) > 0), 0)
cpu = (float(sys.argv[4]) - float(sys.argv[3])) * 1e6 / n if n else float("nan")
print(*[kv[k] for k in sys.argv[2].split(",")], f"{cpu:.2f}")
PY
}
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
# row NAMES KEYS HIGHER-IS-BETTER(1/0) LOAD-ARGS...: one line per name and key (names split
# by '|', keys by ','), all from the same runs.
row() {
    local names=$1 keys=$2 higher=$3; shift 3
    local m_runs=() q_runs=()
    for _ in $(seq "$rounds"); do
        m_runs+=("$(run "$m_port" "$m_pid" "$keys" "$@")")
        q_runs+=("$(run "$q_port" "$q_pid" "$keys" "$@")")
    done
    IFS='|' read -r -a name_list <<<"$names"
    local col=0 name m q mc qc
    for name in "${name_list[@]}"; do
        m=$(median $(printf '%s\n' "${m_runs[@]}" | awk -v c=$((col + 1)) '{print $c}'))
        q=$(median $(printf '%s\n' "${q_runs[@]}" | awk -v c=$((col + 1)) '{print $c}'))
        mc=$(median $(printf '%s\n' "${m_runs[@]}" | awk '{print $NF}'))
        qc=$(median $(printf '%s\n' "${q_runs[@]}" | awk '{print $NF}'))
        printf '%-38s %12.1f %12.1f %7s %9.2f %9.2f\n' "$name" "$m" "$q" \
            "$(python3 -c "m,q=$m,$q; print(f'{(m/q if $higher else q/m):.2f}' if m and q else '-')")" \
            "$mc" "$qc"
        col=$((col + 1))
    done
}
printf '%-38s %12s %12s %7s %9s %9s\n' workload manifold mosquitto ratio m-cpu-us q-cpu-us
# First, on fresh processes (RSS only shows growth before the allocators hold freed memory):
# one round.
rounds_wanted=$rounds; rounds=1
row "10k idle connections (KiB each)" per_connection_kib 0 idle --connections 10000 --pid BROKER_PID
rounds=$rounds_wanted
row "QoS 0, 1 -> 1 (deliveries/s)" deliver_rate 1 throughput --qos 0 --messages 500000
row "QoS 1, 1 -> 1 (deliveries/s)" deliver_rate 1 throughput --qos 1 --messages 200000
row "QoS 1 publish, acked (msgs/s)" publish_rate 1 throughput --qos 1 --messages 200000 --subscribers 0
row "QoS 0, 1 -> 1000 (deliveries/s)" deliver_rate 1 throughput --qos 0 --messages 2000 --subscribers 1000
row "QoS 1, 1 -> 1000 (deliveries/s)" deliver_rate 1 throughput --qos 1 --messages 1000 --subscribers 1000
row "1000 subs @ 50 msg/s: p50 (ms)|1000 subs @ 50 msg/s: p99 (ms)" p50_ms,p99_ms 0 \
    latency --subscribers 1000 --rate 50 --seconds 10
row "offline replay of 1M (msgs/s)" replay_rate 1 replay --messages 1000000
