#!/usr/bin/env python3
"""A crowd polling its place in a waiting room, under wrk: server binaries side by side.

Each binary serves a fresh showtime of 100 seats whose room opened a moment ago and
admits 1 buyer a second; 5,000 buyers join (arrival order gives their places), and
`wrk -t1 -c64` sends `GET /showtimes/{id}/queue/me` for buyers 1,001-5,000 in turn,
each with their own `Queue-Ticket`: the path a line takes between admissions, answered
from the process's snapshot of the room. The binaries run in turn, `--rounds` times,
and the report gives each run's polls a second, p50/p99 and the server's CPU time per
poll (user and system, from /proc: wrk itself takes most of a core, so throughput alone
can hide a cheaper poll), and each binary's means as ratios to the first binary's (the
machine is shared and noisy: compare within a run).

    cargo build --release -p flash-sale-local
    python3 bench/room-polls.py OLD_BINARY NEW_BINARY [--rounds 3] [--secs 10]

Needs wrk (Debian's `wrk`) and the services of `scripts/services`. Each server gets its
own database, Redis key prefix and queue prefix, dropped afterwards.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SEATS = 100
JOINERS = 5_000
POLLERS = range(1_001, JOINERS + 1)
SECRET = "room-polls benchmark secret, 32 bytes or more"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(conn, method, path, body=None, headers=None):
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body)
        headers["content-type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    res = conn.getresponse()
    data = res.read()
    return res.status, (json.loads(data) if data else None)


def start(binary, tag):
    port = free_port()
    env = dict(
        os.environ,
        ADDR=f"127.0.0.1:{port}",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/fs_polls_{tag}",
        REDIS_KEY_PREFIX=f"polls{tag}",
        QUEUE_PREFIX=f"polls{tag}",
        WAITING_ROOM_SECRET=SECRET,
        RUST_LOG="warn",
    )
    log = open(os.path.join(tempfile.gettempdir(), f"room-polls-{tag}.log"), "w")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if call(conn, "GET", "/readyz")[0] == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{binary} exited: see {log.name}")
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"{binary} was not ready in 60 s: see {log.name}")


def stop(proc, tag):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
         f"drop database if exists fs_polls_{tag} with (force)"],
        check=False, capture_output=True)
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"polls{tag}:*"],
                          capture_output=True, text=True).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "del", *keys[i:i + 500]], capture_output=True)
    queues = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL).stdout.split()
    for queue in (q for q in queues if q.startswith(f"polls{tag}")):
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True,
                       stdin=subprocess.DEVNULL)
    exchanges = subprocess.run(["rabbitmqctl", "-q", "list_exchanges", "name"],
                               capture_output=True, text=True,
                               stdin=subprocess.DEVNULL).stdout.split()
    for exchange in (e for e in exchanges if e.startswith(f"polls{tag}")):
        subprocess.run(
            ["rabbitmqctl", "eval",
             f'rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"{exchange}">>), '
             'false, <<"room-polls">>).'],
            capture_output=True, stdin=subprocess.DEVNULL)


def line_up(port):
    """A showtime whose room opened a moment ago, and every joiner's ticket."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    opened = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    status, body = call(conn, "POST", "/showtimes", {
        "capacity": SEATS,
        "waiting_room": {"opens_at": opened, "admit_per_sec": 1, "overbook_pct": 0,
                         "admission_secs": 600},
    })
    assert status == 201, (status, body)
    showtime = body["id"]
    tickets = {}
    for user in range(1, JOINERS + 1):
        status, body = call(conn, "POST", f"/showtimes/{showtime}/queue", {"user_id": user})
        assert status == 200, (status, body)
        tickets[user] = body["ticket"]
    return showtime, tickets


def wrk_script(showtime, tickets):
    pairs = ",\n".join(f'{{{u}, "{tickets[u]}"}}' for u in POLLERS)
    return f"""local pollers = {{
{pairs}
}}
local i = 0
request = function()
  i = i % #pollers + 1
  local p = pollers[i]
  return wrk.format("GET", "/showtimes/{showtime}/queue/me?user_id=" .. p[1], {{["Queue-Ticket"] = p[2]}})
end
"""


def cpu_secs(pid):
    """CPU time a process has used, user and system, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk, port, script, secs):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [wrk, "-t1", "-c64", f"-d{secs}s", "--latency", "-s", f.name,
             f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    rps = p50 = p99 = None
    non_2xx = 0
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["Requests/sec:"]:
            rps = float(words[1])
        elif words[:1] == ["50%"]:
            p50 = words[1]
        elif words[:1] == ["99%"]:
            p99 = words[1]
        elif line.strip().startswith("Non-2xx"):
            non_2xx = int(words[-1])
    if rps is None or non_2xx:
        sys.exit(f"wrk: {non_2xx} answers not 2xx\n{out}")
    return rps, p50, p99


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=10)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed (apt-get install wrk)")
    results = {b: [] for b in args.binaries}
    for r in range(args.rounds):
        for i, binary in enumerate(args.binaries):
            tag = f"{random.getrandbits(32):08x}"
            proc, port = start(binary, tag)
            try:
                showtime, tickets = line_up(port)
                # Warm up, then measure.
                run_wrk(wrk, port, wrk_script(showtime, tickets), 2)
                cpu_before = cpu_secs(proc.pid)
                rps, p50, p99 = run_wrk(wrk, port, wrk_script(showtime, tickets), args.secs)
                cpu_us = (cpu_secs(proc.pid) - cpu_before) * 1e6 / (rps * args.secs)
            finally:
                stop(proc, tag)
            results[binary].append((rps, cpu_us))
            print(f"round {r + 1} binary {i + 1} ({binary}): {rps:,.0f} polls/s, "
                  f"p50 {p50}, p99 {p99}, server CPU {cpu_us:.1f} us a poll", flush=True)
    base = [statistics.mean(x[k] for x in results[args.binaries[0]]) for k in (0, 1)]
    for i, binary in enumerate(args.binaries):
        runs = results[binary]
        rps, cpu = (statistics.mean(x[k] for x in runs) for k in (0, 1))
        print(f"binary {i + 1} ({binary}): mean {rps:,.0f} polls/s ({rps / base[0]:.2f}x "
              f"binary 1), server CPU {cpu:.1f} us a poll ({cpu / base[1]:.2f}x binary 1); "
              f"runs {', '.join(f'{x:,.0f}' for x, _ in runs)}")


if __name__ == "__main__":
    main()
