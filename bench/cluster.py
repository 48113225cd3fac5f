#!/usr/bin/env python3
"""A three-node Manifold group on loopback for the cluster benchmarks (docs/benchmarks.md):

  cluster.py failover BIN TRIALS
      starts 3 nodes of BIN in a temporary directory, then TRIALS times: SIGKILL the leader,
      time until a write *started after the kill* is acknowledged by a survivor (a client
      trying each node in turn), restart the killed node, let it catch up. Prints p50/p99/max.
  cluster.py transfer BIN TRIALS
      starts 3 nodes while a writer appends through whichever node leads, then TRIALS times:
      asks the leader's HTTP listener to hand over to the next node, and times until a write
      started after the request is acknowledged by the new leader. Prints p50/p99/max, then
      checks that every node holds every acknowledged write exactly once.
  cluster.py steady BIN SECS RATE
      starts 3 nodes, runs `resp_load.py latency` (XADD at RATE/s on the leader, one XREAD
      BLOCK reader on a follower) for SECS, and reports whether any node's term or leader
      changed meanwhile.
  cluster.py serve BIN SECS
      starts 3 nodes and prints `leader=PORT followers=PORT,PORT`, then serves for SECS
      seconds (for redis-benchmark or resp_load.py against the leader and the followers).
  cluster.py image BIN MB
      starts 3 nodes with an 8 s retention and 16 MiB segments, SIGKILLs a follower, writes
      48 MiB that retention then removes and MB MiB it keeps (1 KiB XADDs over 100 streams),
      restarts the follower — now behind the leader's retained log — and times until it
      installed an image of the leader and applied everything the leader had committed.
      Prints the time, the image's size and the rate.
  cluster.py redis-sync REDIS_SERVER MB
      the reference for `image`: a redis-server primary (appendonly, fsync always) holding
      the same MB MiB of streams, then a replica started with `replicaof`; times from its
      start until its link is up and it holds every entry (a full resync: an RDB of the
      primary, shipped and loaded).

Each node: --segment-size 64 MiB (16 MiB for `image`), its own RESP and HTTP port; stderr goes
to DIR/logN.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import redis


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Group:
    def __init__(self, binary, root, extra=(), segment=64 << 20):
        self.binary, self.root, self.extra, self.segment = binary, root, list(extra), segment
        self.raft = [free_port() for _ in range(3)]
        self.resp = [free_port() for _ in range(3)]
        self.http = [free_port() for _ in range(3)]
        self.peers = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(self.raft))
        self.procs = [None, None, None]

    def start(self, i):
        log = open(os.path.join(self.root, f"log{i + 1}"), "a")
        self.procs[i] = subprocess.Popen(
            [self.binary, "serve", "--data-dir", os.path.join(self.root, f"n{i + 1}"),
             "--node-id", str(i + 1), "--peers", self.peers,
             "--resp-addr", f"127.0.0.1:{self.resp[i]}",
             "--http-addr", f"127.0.0.1:{self.http[i]}", "--mqtt-addr", "127.0.0.1:0",
             "--segment-size", str(self.segment)] + self.extra,
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

    def admin(self, i, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http[i]}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

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
    print(f"failover over {trials} leader SIGKILLs: p50 {pick(times, 0.5):.0f} ms, "
          f"p99 {pick(times, 0.99):.0f} ms, max {times[-1]:.0f} ms")


def pick(times, q):
    return times[min(len(times) - 1, int(q * len(times)))]


def transfer(g, trials):
    clients = [redis.Redis(port=p, socket_timeout=2, socket_connect_timeout=0.2) for p in g.resp]
    acked, stop = [], threading.Event()

    def writer():
        own = [redis.Redis(port=p, socket_timeout=2, socket_connect_timeout=0.2) for p in g.resp]
        n = 0
        while not stop.is_set():
            n += 1
            for c in own:
                try:
                    c.xadd("w", {"n": n})
                    acked.append(n)
                    break
                except Exception:
                    pass
            else:
                time.sleep(0.001)

    w = threading.Thread(target=writer)
    w.start()
    times = []
    try:
        for t in range(trials):
            leader = g.leader()
            time.sleep(0.3)
            target = (leader + 1) % 3
            asked = time.perf_counter()
            g.admin(leader, f"/cluster/transfer-leader?to={target + 1}", "POST")
            while True:
                try:
                    clients[target].xadd("s", {"t": t})
                    break
                except Exception:
                    time.sleep(0.0005)
            times.append((time.perf_counter() - asked) * 1000)
            print(f"trial {t}: {times[-1]:.1f} ms", file=sys.stderr)
    finally:
        stop.set()
        w.join()
    times.sort()
    print(f"transfer over {trials} hand-overs (request -> first write acknowledged by the new "
          f"leader): p50 {pick(times, 0.5):.1f} ms, p99 {pick(times, 0.99):.1f} ms, "
          f"max {times[-1]:.1f} ms")
    want = acked[:]
    time.sleep(0.5)
    for i in range(3):
        got = [int(f[b"n"]) for _, f in redis.Redis(port=g.resp[i]).xrange("w")]
        missing = set(want) - set(got)
        if missing or len(got) != len(set(got)):
            raise SystemExit(f"node {i + 1}: {len(missing)} acknowledged writes missing, "
                             f"{len(got) - len(set(got))} duplicated")
    print(f"{len(want)} writes acknowledged during the transfers: all present once on every node")


def steady(g, secs, rate):
    leader = g.leader()
    follower = (leader + 1) % 3
    before = [g.admin(i, "/cluster") for i in range(3)]
    load = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resp_load.py")
    subprocess.run([sys.executable, load, "latency", str(g.resp[leader]), str(rate), str(secs),
                    str(g.resp[follower])], check=True)
    after = [g.admin(i, "/cluster") for i in range(3)]
    changed = [(b["node_id"], b["term"], b["leader_id"], a["term"], a["leader_id"])
               for b, a in zip(before, after) if (b["term"], b["leader_id"]) != (a["term"], a["leader_id"])]
    if changed:
        raise SystemExit(f"leadership changed under load (node, term, leader before -> after): {changed}")
    print(f"no leader change in {secs} s at {rate} XADD/s: every node still in term "
          f"{after[0]['term']} under leader {after[0]['leader_id']}")


def fill(port, mib, tag):
    r = redis.Redis(port=port, socket_timeout=60)
    value = "v" * 1024
    for batch in range(mib):
        p = r.pipeline(transaction=False)
        for k in range(1024):
            p.xadd(f"{tag}{k % 100}", {"f": value})
        p.execute()


def image(g, mib):
    leader = g.leader()
    away = (leader + 1) % 3
    g.procs[away].send_signal(signal.SIGKILL)
    g.procs[away].wait()
    g.procs[away] = None
    fill(g.resp[leader], 48, "old")
    time.sleep(9)
    fill(g.resp[leader], mib, "new")
    # Retention cuts the leader's log past where the follower stopped.
    first = os.path.join(g.root, f"n{leader + 1}", "commitlog")
    deadline = time.time() + 30
    while sorted(os.listdir(first))[0] == "0" * 20:
        if time.time() > deadline:
            raise SystemExit("retention did not cut the leader's log")
        time.sleep(0.1)
    target = g.admin(leader, "/cluster")["commit_index"]
    started = time.perf_counter()
    g.start(away)
    while True:
        try:
            # Down for a moment while it restarts on the image.
            if g.admin(away, "/cluster")["applied_index"] >= target:
                break
        except OSError:
            if g.procs[away].poll() is not None:
                raise SystemExit("the follower exited")
        time.sleep(0.01)
    took = time.perf_counter() - started
    sent = None
    with open(os.path.join(g.root, f"log{leader + 1}")) as log:
        for line in log:
            if "sending an image" in line and "bytes=" in line:
                sent = int(line.split("bytes=")[1].split()[0])
    if sent is None:
        raise SystemExit("the follower caught up without an image")
    print(f"follower behind the retained log: restart to applying index {target} in "
          f"{took * 1000:.0f} ms; image {sent / 2**20:.1f} MiB shipped "
          f"({sent / 2**20 / took:.0f} MiB/s including restart and the install)")


def redis_sync(server, root, mib):
    primary, replica = free_port(), free_port()
    procs = []

    def start(port, *more):
        d = os.path.join(root, str(port))
        os.makedirs(d)
        procs.append(subprocess.Popen(
            [server, "--port", str(port), "--dir", d, "--appendonly", "yes",
             "--appendfsync", "always", "--save", ""] + list(more),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        r = redis.Redis(port=port, socket_timeout=60)
        deadline = time.time() + 10
        while True:
            try:
                r.ping()
                return r
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.01)

    try:
        p = start(primary)
        fill(primary, mib, "new")
        want = sum(p.xlen(f"new{k}") for k in range(100))
        started = time.perf_counter()
        r = start(replica, "--replicaof", "127.0.0.1", str(primary))
        while True:
            try:
                up = r.info("replication").get("master_link_status") == "up"
                if up and sum(r.xlen(f"new{k}") for k in range(100)) == want:
                    break
            except redis.BusyLoadingError:
                pass
            time.sleep(0.01)
        took = time.perf_counter() - started
        print(f"redis-server replica full resync of {mib} MiB of streams ({want} entries): "
              f"{took * 1000:.0f} ms from its start")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main():
    # SIGTERM ends the run like Ctrl-C: the nodes are stopped and the directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    what, binary = sys.argv[1], sys.argv[2]
    root = tempfile.mkdtemp(prefix="manifold-cluster-", dir=os.environ.get("MANIFOLD_BENCH_DIR"))
    if what == "redis-sync":
        try:
            redis_sync(binary, root, int(sys.argv[3]))
        finally:
            subprocess.run(["rm", "-rf", root])
        return
    g = Group(binary, root)
    if what == "image":
        g = Group(binary, root, ["--retention-ms", "8000", "--retention-check-ms", "200"], 16 << 20)
    try:
        for i in range(3):
            g.start(i)
        if what == "failover":
            failover(g, int(sys.argv[3]))
        elif what == "transfer":
            transfer(g, int(sys.argv[3]))
        elif what == "steady":
            steady(g, float(sys.argv[3]), int(sys.argv[4]))
        elif what == "image":
            image(g, int(sys.argv[3]))
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
