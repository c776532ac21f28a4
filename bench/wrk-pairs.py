#!/usr/bin/env python3
"""One route under wrk, server binaries side by side: requests a second and server CPU each.

`--route` picks what `wrk -t1 -c64` sends, on a fresh showtime for each run:
- `poll` (default): a crowd polling its place in a waiting room. The room opened a
  moment ago and admits 1 buyer a second; 5,000 buyers join (arrival order gives their
  places), and wrk sends `GET /showtimes/{id}/queue/me` for buyers 1,001-5,000 in turn,
  each with their own `Queue-Ticket`: the path a line takes between admissions, answered
  from the process's snapshot of the room.
- `join`: `POST /showtimes/{id}/queue` with a fresh user each time, the room opening in
  two hours (every answer `waiting`): the crowd joining before an opening.
- `sold-out`: `POST /reserve` with a fresh user each time on a showtime whose one seat is
  taken (every answer 409 `sold_out`): the crowd after the last seat.

The binaries run in turn, `--rounds` times, and the report gives each run's requests a
second, p50/p99, the server's CPU time per request (user and system, from /proc: wrk
itself takes most of a core, so throughput alone can hide a cheaper answer) and the
script calls it made to Redis a second (`EVALSHA` in `INFO commandstats`, so run it on a
Redis nothing else is using), and each binary's means as ratios to the first binary's
(the machine is shared and noisy: compare within a run).

    cargo build --release -p flash-sale-local
    python3 bench/wrk-pairs.py OLD_BINARY NEW_BINARY [--route poll] [--rounds 3] [--secs 10]

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
SECRET = "wrk-pairs benchmark secret, 32 bytes or more"


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
    log = open(os.path.join(tempfile.gettempdir(), f"wrk-pairs-{tag}.log"), "w")
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
             'false, <<"wrk-pairs">>).'],
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


def room_opening_later(port):
    """A showtime whose room opens in two hours."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    opens = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
    status, body = call(conn, "POST", "/showtimes",
                        {"capacity": SEATS, "waiting_room": {"opens_at": opens}})
    assert status == 201, (status, body)
    return body["id"]


def sold_out(port):
    """A showtime whose one seat is taken."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, body = call(conn, "POST", "/showtimes", {"capacity": 1})
    assert status == 201, (status, body)
    showtime = body["id"]
    status, body = call(conn, "POST", "/reserve", {"user_id": 1, "showtime_id": showtime})
    assert status == 200, (status, body)
    return showtime


def fresh_users_script(method, path, body, first_user):
    """wrk sends `body` (a Lua expression of `user`) to `path`, a fresh user each time,
    from `first_user` + 1 on."""
    return f"""local user = {first_user}
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  user = user + 1
  return wrk.format(nil, "{path}", nil, {body})
end
"""


def reserve_script(showtime, first_user):
    """`POST /reserve` on `showtime`, a fresh user each time."""
    body = ("""'{"user_id":' .. string.format("%.0f", user) .. """
            f"""',"showtime_id":{showtime}}}'""")
    return fresh_users_script("POST", "/reserve", body, first_user)


def prepare(route, port):
    """For `route`: what wrk sends in a run whose users start after `first_user` (each
    run its own users: a join already made, or a hold already taken, answers otherwise),
    and the status every answer has."""
    if route == "join":
        showtime = room_opening_later(port)
        body = """'{"user_id":' .. string.format("%.0f", user) .. '}'"""
        return (lambda first_user: fresh_users_script(
            "POST", f"/showtimes/{showtime}/queue", body, first_user)), "2xx"
    if route == "sold-out":
        showtime = sold_out(port)
        return (lambda first_user: reserve_script(showtime, first_user)), "409"
    showtime, tickets = line_up(port)
    return (lambda _: wrk_script(showtime, tickets)), "2xx"


def find_wrk():
    """wrk's path, or the end of the run with how to install it."""
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed (apt-get install wrk)")
    return wrk


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


def redis_script_calls():
    """`EVALSHA` calls Redis has served since it started (or its stats were reset)."""
    out = subprocess.run(["redis-cli", "info", "commandstats"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def run_wrk(wrk, port, script, secs, expected="2xx"):
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
    total = next((int(line.split()[0]) for line in out.splitlines()
                  if "requests in" in line), None)
    if rps is None or (expected == "2xx" and non_2xx) or (expected != "2xx" and non_2xx != total):
        sys.exit(f"wrk: {non_2xx} answers not 2xx, {expected} expected\n{out}")
    return rps, p50, p99


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--route", choices=["poll", "join", "sold-out"], default="poll")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=10)
    args = parser.parse_args()
    wrk = find_wrk()
    results = {b: [] for b in args.binaries}
    for r in range(args.rounds):
        for i, binary in enumerate(args.binaries):
            tag = f"{random.getrandbits(32):08x}"
            proc, port = start(binary, tag)
            try:
                script, expected = prepare(args.route, port)
                # Warm up, then measure, each with users of its own.
                run_wrk(wrk, port, script(1_000_000), 2, expected)
                cpu_before = cpu_secs(proc.pid)
                calls_before = redis_script_calls()
                rps, p50, p99 = run_wrk(wrk, port, script(100_000_000), args.secs, expected)
                cpu_us = (cpu_secs(proc.pid) - cpu_before) * 1e6 / (rps * args.secs)
                calls = (redis_script_calls() - calls_before) / args.secs
            finally:
                stop(proc, tag)
            results[binary].append((rps, cpu_us))
            print(f"round {r + 1} binary {i + 1} ({binary}): {rps:,.0f} {args.route}s/s, "
                  f"p50 {p50}, p99 {p99}, server CPU {cpu_us:.1f} us each, "
                  f"{calls:,.0f} Redis script calls/s", flush=True)
    base = [statistics.mean(x[k] for x in results[args.binaries[0]]) for k in (0, 1)]
    for i, binary in enumerate(args.binaries):
        runs = results[binary]
        rps, cpu = (statistics.mean(x[k] for x in runs) for k in (0, 1))
        print(f"binary {i + 1} ({binary}): mean {rps:,.0f} {args.route}s/s ({rps / base[0]:.2f}x "
              f"binary 1), server CPU {cpu:.1f} us each ({cpu / base[1]:.2f}x binary 1); "
              f"runs {', '.join(f'{x:,.0f}' for x, _ in runs)}")


if __name__ == "__main__":
    main()
