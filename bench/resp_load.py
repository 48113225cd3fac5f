#!/usr/bin/env python3
"""Load generator for Manifold's RESP front end and the reference redis-server (same workload,
same run; docs/benchmarks.md quotes its figures). Raw RESP over asyncio sockets, no client
library in the way. Workloads:

  idle PORT PID N            N idle connections: server RSS per connection (KiB)
  blocked PORT PID N SECS    N clients in XREAD BLOCK 0: server CPU seconds over SECS idle
  latency PORT RATE SECS [READ_PORT]
                             XADD at RATE/s, one XREAD BLOCK reader (on READ_PORT if given: a
                             follower of the leader at PORT): delivery latency p50/p99 (µs)
  group PORT N CONSUMERS     N entries, CONSUMERS XREADGROUP COUNT 100 + XACK loops: entries/s
  tx PORT N CLIENTS          N transactions (MULTI, XADD a, XADD b, XLEN a, EXEC) from CLIENTS
                             connections, one write per transaction: transactions/s
  xdel-newest PORT N         after 2,000 entries of 100 bytes, N times XADD of 300 bytes then XDEL
                             of it (the newest stream node removed, the next entry goes into the
                             node before): pairs/s and XINFO's radix-tree-keys
"""
import asyncio
import os
import sys
import time


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


async def read_reply(r):
    line = await r.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return rest if kind != b"-" else Exception(rest.decode())
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await r.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [await read_reply(r) for _ in range(n)]
    raise ValueError(line)


async def call(r, w, *args):
    w.write(enc(*args))
    await w.drain()
    return await read_reply(r)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


async def idle(port, pid, n):
    before = rss_kib(pid)
    conns = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        conns.append((r, w))
        if i % 500 == 0:
            await call(r, w, "PING")
    for r, w in conns[-10:]:
        await call(r, w, "PING")
    await asyncio.sleep(1)
    after = rss_kib(pid)
    print(f"idle connections: {n}, server RSS +{after - before} KiB, {(after - before) / n:.2f} KiB each")
    for _, w in conns:
        w.close()


async def blocked(port, pid, n, secs):
    conns = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(enc("XREAD", "BLOCK", "0", "STREAMS", f"idle-{i}", "$"))
        await w.drain()
        conns.append((r, w))
    await asyncio.sleep(2)
    c0 = cpu_s(pid)
    await asyncio.sleep(secs)
    c1 = cpu_s(pid)
    print(f"blocked readers: {n}, server CPU {c1 - c0:.3f} s over {secs} s idle")
    for _, w in conns:
        w.close()


async def latency(port, rate, secs, read_port=None):
    rr, rw = await asyncio.open_connection("127.0.0.1", read_port or port)
    wr, ww = await asyncio.open_connection("127.0.0.1", port)
    key = f"lat-{os.getpid()}-{time.time_ns()}"
    lat = []
    done = asyncio.Event()

    async def reader():
        last = "$"
        while not done.is_set():
            reply = await call(rr, rw, "XREAD", "BLOCK", "1000", "STREAMS", key, last)
            now = time.perf_counter_ns()
            if not reply:
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode()
                lat.append((now - int(fields[1])) / 1000)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.2)
    # The writer does not wait for each reply (a durable XADD takes an fsync): replies are
    # drained by their own task, so the rate holds.
    acked = 0

    async def drain():
        nonlocal acked
        while True:
            await read_reply(wr)
            acked += 1

    drainer = asyncio.create_task(drain())
    interval = 1 / rate
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < secs:
        target = start + sent * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ww.write(enc("XADD", key, "*", "t", str(time.perf_counter_ns())))
        sent += 1
        if sent % 50 == 0:
            await ww.drain()
    await ww.drain()
    while acked < sent:
        await asyncio.sleep(0.01)
    drainer.cancel()
    await asyncio.sleep(0.5)
    done.set()
    await call(wr, ww, "XADD", key, "*", "t", str(time.perf_counter_ns()))
    await task
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"latency: {sent} sent in {secs} s ({sent / secs:.0f}/s), {len(lat)} received, "
          f"p50 {p(0.5):.0f} µs, p99 {p(0.99):.0f} µs, max {lat[-1]:.0f} µs")


async def group(port, n, consumers):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    key = f"grp-{os.getpid()}-{time.time_ns()}"
    await call(r, w, "XGROUP", "CREATE", key, "g", "$", "MKSTREAM")
    batch = 500
    for i in range(0, n, batch):
        w.write(b"".join(enc("XADD", key, "*", "f", "v") for _ in range(batch)))
        await w.drain()
        for _ in range(batch):
            await read_reply(r)
    got = 0
    start = time.perf_counter()

    async def consumer(c):
        nonlocal got
        cr, cw = await asyncio.open_connection("127.0.0.1", port)
        while True:
            reply = await call(cr, cw, "XREADGROUP", "GROUP", "g", f"c{c}", "COUNT", "100",
                               "STREAMS", key, ">")
            if not reply:
                return
            ids = [e[0] for e in reply[0][1]]
            await call(cr, cw, "XACK", key, "g", *ids)
            got += len(ids)

    await asyncio.gather(*(consumer(c) for c in range(consumers)))
    secs = time.perf_counter() - start
    print(f"group read+ack: {got} entries, {consumers} consumers, {got / secs:.0f} entries/s")


async def tx(port, n, clients):
    key = f"tx-{os.getpid()}-{time.time_ns()}"
    one = b"".join([enc("MULTI"), enc("XADD", key + "a", "*", "f", "v"),
                    enc("XADD", key + "b", "*", "f", "v"), enc("XLEN", key + "a"), enc("EXEC")])
    done = 0

    async def client():
        nonlocal done
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while done < n:
            done += 1
            w.write(one)
            await w.drain()
            replies = [await read_reply(r) for _ in range(5)]
            exec_reply = replies[-1]
            if not isinstance(exec_reply, list) or len(exec_reply) != 3:
                raise SystemExit(f"EXEC answered {exec_reply!r}")
        w.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    secs = time.perf_counter() - start
    print(f"tx: {done} transactions, {clients} clients, {done / secs:.0f} transactions/s")


async def xdel_newest(port, n):
    key = f"xdel-{os.getpid()}-{time.time_ns()}"
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"".join(enc("XADD", key, "*", "f", "v" * 100) for _ in range(2000)))
    await w.drain()
    for _ in range(2000):
        await read_reply(r)
    start = time.perf_counter()
    for _ in range(n):
        entry = await call(r, w, "XADD", key, "*", "f", "w" * 300)
        if await call(r, w, "XDEL", key, entry) != b"1":
            raise SystemExit("XDEL removed nothing")
    secs = time.perf_counter() - start
    info = await call(r, w, "XINFO", "STREAM", key)
    keys = int(info[info.index(b"radix-tree-keys") + 1])
    print(f"xdel-newest: {n / secs:.0f} XADD+XDEL pairs/s, radix-tree-keys {keys}")
    await call(r, w, "DEL", key)
    w.close()


def main():
    what, port = sys.argv[1], int(sys.argv[2])
    if what == "idle":
        asyncio.run(idle(port, int(sys.argv[3]), int(sys.argv[4])))
    elif what == "blocked":
        asyncio.run(blocked(port, int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
    elif what == "latency":
        read_port = int(sys.argv[5]) if len(sys.argv) > 5 else None
        asyncio.run(latency(port, int(sys.argv[3]), float(sys.argv[4]), read_port))
    elif what == "group":
        asyncio.run(group(port, int(sys.argv[3]), int(sys.argv[4])))
    elif what == "tx":
        asyncio.run(tx(port, int(sys.argv[3]), int(sys.argv[4])))
    elif what == "xdel-newest":
        asyncio.run(xdel_newest(port, int(sys.argv[3])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
