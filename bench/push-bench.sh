#!/usr/bin/env bash
# Issue 7's HTTP push benchmarks (docs/benchmarks.md), with bench/push-load against release
# builds of Manifold on this machine; one `run=... key=value` line per workload:
#   0. No server: the kernel's own cost of one small message to each of N loopback TCP
#      connections (one writer thread, then two) — the floor under 1, 2 and 4.
#   1. 10,000 WebSocket subscribers of one topic, a publisher at 10 msg/s: every delivery's
#      latency, whether all arrived, RSS per connection, server CPU per delivery. The server
#      is pinned to CPU 0 and the load generator to CPU 1 (as the RESP and MQTT benchmarks
#      are): the topic's hub writes the frames from one thread, and the generator reads them
#      on the other core.
#   2. 10,000 long-polls waiting on one topic: the server's CPU while they wait, then rounds of
#      one publish each — how long after it each poll is answered. Not pinned: the answers are
#      sent from both cores' worker threads.
#   3. 1,000,000 messages of 64 bytes read from the start of a topic by one WebSocket client,
#      then by one Server-Sent Events client: messages/s.
#   4. As 1, with the subscribers on a follower of a three-node group (publisher on the
#      leader): the follower on CPU 0, the generator on CPU 1, the other two nodes unpinned.
# Usage: bench/push-bench.sh [subscribers]   (default 10000; needs python3 for free ports,
# taskset). Data goes under $MANIFOLD_BENCH_DIR (default target/bench-data).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
dir=${MANIFOLD_BENCH_DIR:-target/bench-data}/push
rm -rf "$dir" && mkdir -p "$dir"
cargo build --release -q -p manifold -p push-load
load=./target/release/push-load
bin=./target/release/manifold
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
ready() { # port
    for _ in $(seq 200); do
        curl -sf "127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no node on $1" >&2
    return 1
}

# The floor: as many connections as the open-file limit allows (two descriptors each).
floor=$(( $(ulimit -n) / 2 - 100 )); [ "$floor" -gt "$n" ] && floor=$n
$load floor --connections "$floor" --rounds 5

# One node, pinned, for the fan-out (its RSS per connection measured from a fresh process).
http=$(port); resp=$(port)
taskset -c 0 $bin serve --data-dir "$dir/fanout" --http-addr "127.0.0.1:$http" \
    --resp-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 2>"$dir/fanout.log" & pids+=($!); pid=$!
ready "$http"
taskset -c 1 $load --http "127.0.0.1:$http" --pid "$pid" --topic fan ws-fanout \
    --subscribers "$n" --rate 10 --seconds 30
kill "$pid"; wait "$pid" 2>/dev/null || true

# One node, not pinned, for the rest.
http=$(port); resp=$(port)
$bin serve --data-dir "$dir/single" --http-addr "127.0.0.1:$http" --resp-addr "127.0.0.1:$resp" \
    --mqtt-addr 127.0.0.1:0 2>"$dir/single.log" & pids+=($!); pid=$!
ready "$http"
$load --http "127.0.0.1:$http" --pid "$pid" --topic wake poll-wake --waiters "$n" --rounds 5
$load --http "127.0.0.1:$http" --topic bulk preload --resp "127.0.0.1:$resp" --messages 1000000 --size 64
$load --http "127.0.0.1:$http" --topic bulk ws-read --messages 1000000
$load --http "127.0.0.1:$http" --topic bulk sse-read --messages 1000000
kill "$pid"; wait "$pid" 2>/dev/null || true

# A three-node group: subscribers on a follower, the publisher on the leader.
raft=($(port) $(port) $(port)); web=($(port) $(port) $(port))
peers="1=127.0.0.1:${raft[0]},2=127.0.0.1:${raft[1]},3=127.0.0.1:${raft[2]}"
gpids=()
for i in 0 1 2; do
    $bin serve --data-dir "$dir/n$((i + 1))" --node-id $((i + 1)) --peers "$peers" \
        --http-addr "127.0.0.1:${web[$i]}" --resp-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 \
        2>"$dir/n$((i + 1)).log" & pids+=($!); gpids+=($!)
done
for i in 0 1 2; do ready "${web[$i]}"; done
leader=""
for _ in $(seq 100); do
    for i in 0 1 2; do
        if curl -sf "127.0.0.1:${web[$i]}/cluster" | grep -q '"role":"leader"'; then leader=$i; fi
    done
    [ -n "$leader" ] && break
    sleep 0.2
done
follower=$(( (leader + 1) % 3 ))
echo "group: leader node $((leader + 1)), subscribers on follower node $((follower + 1))"
taskset -a -p -c 0 "${gpids[$follower]}" >/dev/null
taskset -c 1 $load --http "127.0.0.1:${web[$follower]}" --publish-http "127.0.0.1:${web[$leader]}" \
    --pid "${gpids[$follower]}" --topic fan ws-fanout --subscribers "$n" --rate 10 --seconds 30
