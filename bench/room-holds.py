#!/usr/bin/env python3
"""A hold through a waiting room against a plain hold, on one server binary, under wrk.

The server gets two showtimes of 200,000 seats: one behind a waiting room that opened a
moment ago (`--buyers` join it and are admitted at once, each keeping their admission),
one without a room. Then `wrk -t1 -c64` alternates between them, `--rounds` times:
`POST /reserve` on the plain showtime with a fresh user each time, and on the room's
showtime with the next admitted buyer's own `Admission-Token` (each admission used once:
a round stops being a run of holds when wrk runs out of buyers, so keep `--secs` times
the hold rate below `--buyers` / `--rounds`). The mock payer pays every hold, as in
`million-queued`. The report gives each run's holds a second and p50/p99, and the room's
mean as a ratio to the plain holds'.

    cargo build --release -p flash-sale-local
    python3 bench/room-holds.py BINARY [--buyers 50000] [--rounds 1] [--secs 2]

Needs wrk and the services of `scripts/services`; the server gets its own database,
Redis key prefix and queue prefix (bench/wrk-pairs.py's), dropped afterwards.
"""

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
import http.client

spec = importlib.util.spec_from_file_location(
    "wrk_pairs", os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk-pairs.py"))
pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pairs)

SEATS = 200_000


def showtimes(port, buyers):
    """The room's showtime with every buyer's admission, and a plain one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    opened = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    status, body = pairs.call(conn, "POST", "/showtimes", {
        "capacity": SEATS, "waiting_room": {"opens_at": opened, "admission_secs": 600}})
    assert status == 201, (status, body)
    room = body["id"]
    status, body = pairs.call(conn, "POST", "/showtimes", {"capacity": SEATS})
    assert status == 201, (status, body)
    plain = body["id"]
    admitted = []
    for user in range(1, buyers + 1):
        status, body = pairs.call(conn, "POST", f"/showtimes/{room}/queue", {"user_id": user})
        for _ in range(50):
            if body["status"] == "admitted":
                break
            time.sleep(0.05)
            status, body = pairs.call(conn, "GET", f"/showtimes/{room}/queue/me?user_id={user}",
                                      None, {"Queue-Ticket": body["ticket"]})
        assert body["status"] == "admitted", body
        admitted.append((user, body["admission"]))
    return room, plain, admitted


def admitted_script(room, admitted):
    buyers = ",\n".join(f'{{{u}, "{a}"}}' for u, a in admitted)
    return f"""local buyers = {{
{buyers}
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #buyers + 1
  local b = buyers[i]
  return wrk.format(nil, "/reserve", {{["Admission-Token"] = b[2]}},
    '{{"user_id":' .. b[1] .. ',"showtime_id":{room}}}')
end
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--buyers", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--secs", type=int, default=2)
    args = parser.parse_args()
    wrk = pairs.find_wrk()
    os.environ["PAYMENT_MODE"] = "mock"
    tag = f"{random.getrandbits(32):08x}"
    proc, port = pairs.start(args.binary, tag)
    rates = {"plain": [], "room": []}
    try:
        room, plain, admitted = showtimes(port, args.buyers)
        share = len(admitted) // args.rounds
        for r in range(args.rounds):
            runs = [
                # Fresh users: none has held a seat of the plain showtime.
                ("plain", pairs.reserve_script(plain, 10_000_000 + r * 1_000_000)),
                # Each admitted buyer holds once.
                ("room", admitted_script(room, admitted[r * share:(r + 1) * share])),
            ]
            if r % 2:
                runs.reverse()
            for name, script in runs:
                rps, p50, p99 = pairs.run_wrk(wrk, port, script, args.secs)
                rates[name].append(rps)
                print(f"round {r + 1} {name}: {rps:,.0f} holds/s, p50 {p50}, p99 {p99}",
                      flush=True)
    finally:
        pairs.stop(proc, tag)
    plain_mean, room_mean = statistics.mean(rates["plain"]), statistics.mean(rates["room"])
    print(f"through the room: {room_mean:,.0f} holds/s, {room_mean / plain_mean:.2f}x the "
          f"plain holds' {plain_mean:,.0f}")


if __name__ == "__main__":
    main()
