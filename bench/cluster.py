#!/usr/bin/env python3
"""A three-node Manifold group on loopback for the cluster benchmarks (docs/benchmarks.md):

  cluster.py failover BIN TRIALS
      starts 3 nodes of BIN in a temporary directory, then TRIALS times: SIGKILL the leader,
      time until a write *started after the kill* is acknowledged by a survivor (a client
      trying each node in turn), restart the killed node, let it catch up. Prints p50/p99/max.
  cluster.py serve BIN SECS
      starts 3 nodes and prints `leader=PORT followers=PORT,PORT`, then serves for SECS
      seconds (for redis-benchmark or resp_load.py against the leader and the followers).

Each node: --segment-size 64 MiB, its own RESP port; stderr goes to DIR/logN.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Group:
    def __init__(self, binary, root):
        self.binary, self.root = binary, root
        self.raft = [free_port() for _ in range(3)]
        self.resp = [free_port() for _ in range(3)]
        self.peers = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(self.raft))
        self.procs = [None, None, None]

    def start(self, i):
        log = open(os.path.join(self.root, f"log{i + 1}"), "a")
        self.procs[i] = subprocess.Popen(
            [self.binary, "serve", "--data-dir", os.path.join(self.root, f"n{i + 1}"),
             "--node-id", str(i + 1), "--peers", self.peers,
             "--resp-addr", f"127.0.0.1:{self.resp[i]}",
             "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
             "--segment-size", str(64 << 20)],
            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                redis.Redis(port=self.resp[i], socket_timeout=1).ping()
                return
            except Exception:
                time.sleep(0.01)
        raise RuntimeError(f"node {i + 1} did not start")

    def role(self, i):
        try:
            info = redis.Redis(port=self.resp[i], socket_timeout=1).info("replication")
            return info.get("manifold_raft_role")
        except Exception:
            return None

    def leader(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i in range(3):
                if self.procs[i] and self.role(i) == "leader":
                    try:
                        redis.Redis(port=self.resp[i], socket_timeout=1).xadd("warm", {"x": 1})
                        return i
                    except Exception:
                        pass
            time.sleep(0.005)
        raise RuntimeError("no leader")

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p:
                p.wait()


def failover(g, trials):
    clients = [redis.Redis(port=p, socket_timeout=2, socket_connect_timeout=0.2) for p in g.resp]
    times = []
    for t in range(trials):
        leader = g.leader()
        time.sleep(0.3)
        killed = time.perf_counter()
        g.procs[leader].send_signal(signal.SIGKILL)
        g.procs[leader].wait()
        g.procs[leader] = None
        done = None
        while done is None:
            for i, c in enumerate(clients):
                if i == leader:
                    continue
                try:
                    c.xadd("s", {"t": t})
                    done = time.perf_counter()
                    break
                except Exception:
                    c.connection_pool.disconnect()
        times.append((done - killed) * 1000)
        g.start(leader)
        print(f"trial {t}: {times[-1]:.0f} ms", file=sys.stderr)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"failover over {trials} leader SIGKILLs: p50 {pick(0.5):.0f} ms, "
          f"p99 {pick(0.99):.0f} ms, max {times[-1]:.0f} ms")


def main():
    # SIGTERM ends the run like Ctrl-C: the nodes are stopped and the directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    what, binary = sys.argv[1], sys.argv[2]
    root = tempfile.mkdtemp(prefix="manifold-cluster-", dir=os.environ.get("MANIFOLD_BENCH_DIR"))
    g = Group(binary, root)
    try:
        for i in range(3):
            g.start(i)
        if what == "failover":
            failover(g, int(sys.argv[3]))
        elif what == "serve":
            leader = g.leader()
            followers = [g.resp[i] for i in range(3) if i != leader]
            print(f"leader={g.resp[leader]} followers={followers[0]},{followers[1]}", flush=True)
            time.sleep(float(sys.argv[3]))
    finally:
        g.stop()
        if not os.environ.get("MANIFOLD_KEEP"):
            subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    main()
