#!/usr/bin/env python3
"""Clients for bench/edge.sh: third-party HTTP stacks (requests, httpx + h2, the standard
library's ssl and http.client) thrown at a running consentry to check its edge behaviours.

Each subcommand prints one `PASS name: ...` or `FAIL name: ...` line per check, with the
numbers behind it, and exits 1 if any check failed. See bench/edge.sh for how they are run.

  requests-cases  HTTP/1.1 with `requests`: a 10 MB body -> 413, 600 KB of headers -> 431
  httpx-cases     h2 with `httpx`: 60 KB body without a token -> 401, 10 MB body -> 413
  swarm           slow clients: N TLS connections, each a POST with Content-Length 60000 that
                  sends one byte every 2 s; reconnects when closed; status in a JSON file
  sends           real sends (new connections and one keep-alive connection) with latencies,
                  while sampling the server's open file descriptors
  idle-h2         an h2 connection that sends only the preface; when does the server close it
  log-rate        a rate-limited line of the server log appears at most once per N s
"""

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time

FAILED = False


def verdict(ok, name, detail):
    global FAILED
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED = True


def tls_context(ca, alpn):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(alpn)
    return ctx


def error_code(text):
    """The `error.code` of a consentry JSON error body, or None."""
    try:
        return json.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def tally(outcomes):
    """{outcome: count} as a short sorted string."""
    counts = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # nearest-rank
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def send_body(i, pad=0):
    return json.dumps(
        {
            "to": f"+1415555{100 + i % 100:04d}",
            "from": "+12025550100",
            "body": "Your code is 123456" + "x" * pad,
            "purpose": "transactional",
        }
    ).encode()


# --- 2. requests (HTTP/1.1, whole body written before the answer is read) -------------------

def requests_cases(args):
    import requests

    url = f"https://127.0.0.1:{args.port}/v1/messages"
    auth = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}

    big = b"a" * (10 << 20)
    outcomes = []
    for _ in range(args.tries):
        try:
            r = requests.post(url, data=big, headers=auth, verify=args.ca, timeout=30)
            outcomes.append(f"{r.status_code} {error_code(r.text)}")
        except Exception as exc:  # noqa: BLE001 - the exception's type is the finding
            outcomes.append(type(exc).__name__)
    ok = all(o == "413 payload_too_large" for o in outcomes)
    verdict(ok, "requests 10 MB body -> 413 payload_too_large",
            f"{args.tries} tries: {tally(outcomes)}")

    huge = dict(auth, **{"X-Padding": "h" * (600 * 1024)})
    outcomes = []
    for _ in range(args.tries):
        try:
            r = requests.post(url, data=send_body(0), headers=huge, verify=args.ca, timeout=30)
            outcomes.append(str(r.status_code))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(type(exc).__name__)
    ok = all(o == "431" for o in outcomes)
    verdict(ok, "requests 600 KB of headers -> 431", f"{args.tries} tries: {tally(outcomes)}")


# --- 3. httpx over h2 --------------------------------------------------------------------------

def httpx_cases(args):
    import httpx

    url = f"https://127.0.0.1:{args.port}/v1/messages"
    json_type = {"Content-Type": "application/json"}
    cases = [
        ("httpx h2 60 KB body, no token -> 401 missing_token",
         send_body(0, pad=60 * 1024), json_type, "401 missing_token"),
        ("httpx h2 10 MB body, valid token -> 413 payload_too_large",
         b"a" * (10 << 20), dict(json_type, Authorization=f"Bearer {args.token}"),
         "413 payload_too_large"),
    ]
    for name, body, headers, expected in cases:
        outcomes = []
        # One client for all tries: an early answer must also leave the h2 connection usable.
        with httpx.Client(http2=True, verify=args.ca, timeout=30) as client:
            for _ in range(args.tries):
                try:
                    r = client.post(url, content=body, headers=headers)
                    outcomes.append(f"{r.http_version} {r.status_code} {error_code(r.text)}")
                except Exception as exc:  # noqa: BLE001
                    outcomes.append(type(exc).__name__)
        ok = all(o == f"HTTP/2 {expected}" for o in outcomes)
        verdict(ok, name, f"{args.tries} tries: {tally(outcomes)}")


# --- 4a. the slow clients ----------------------------------------------------------------------

class SwarmStats:
    def __init__(self):
        self.attempts = 0      # connections tried
        self.connected = 0     # TLS handshakes completed
        self.open_now = 0      # completed and not yet closed
        self.max_open = 0
        self.closed_by_server = 0
        self.failed = 0        # connect or handshake failed (refused, reset during handshake)
        self.answers = {}      # status line code -> count
        self.bytes_sent = 0
        self.server_fds_max = 0  # the server's open file descriptors, sampled every 0.1 s

    def snapshot(self):
        return dict(vars(self), time=time.time())


async def slow_client(i, args, ctx, stats, stop):
    head = (
        "POST /v1/messages HTTP/1.1\r\n"
        "Host: localhost\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 60000\r\n\r\n"
    ).encode()
    while not stop.is_set():
        stats.attempts += 1
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", args.port, ssl=ctx,
                                        server_hostname="localhost"),
                timeout=10)
        except Exception:  # noqa: BLE001
            stats.failed += 1
            await asyncio.sleep(args.reconnect)
            continue
        stats.connected += 1
        stats.open_now += 1
        stats.max_open = max(stats.max_open, stats.open_now)

        async def read_answer():
            data = b""
            try:
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    data += chunk
            except Exception:  # noqa: BLE001 - reset, TLS error: closed all the same
                pass
            if data.startswith(b"HTTP/1.1 "):
                code = data[9:12].decode(errors="replace")
                stats.answers[code] = stats.answers.get(code, 0) + 1

        answer = asyncio.create_task(read_answer())
        try:
            writer.write(head)
            await writer.drain()
            sent = 0
            while not stop.is_set() and not answer.done() and sent < 60000:
                writer.write(b"a")
                await writer.drain()
                sent += 1
                stats.bytes_sent += 1
                try:
                    await asyncio.wait_for(asyncio.shield(answer), timeout=args.interval)
                except asyncio.TimeoutError:
                    pass
        except Exception:  # noqa: BLE001
            pass
        if not stop.is_set():
            try:
                await asyncio.wait_for(answer, timeout=15)
            except Exception:  # noqa: BLE001
                pass
            stats.closed_by_server += 1
        answer.cancel()
        stats.open_now -= 1
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        if not stop.is_set():
            await asyncio.sleep(args.reconnect)


async def swarm_main(args):
    ctx = tls_context(args.ca, ["http/1.1"])
    stats = SwarmStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def write_status(final=False):
        snapshot = stats.snapshot()
        snapshot["final"] = final
        tmp = args.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, args.status)

    tasks = [asyncio.create_task(slow_client(i, args, ctx, stats, stop))
             for i in range(args.count)]
    ticks = 0
    while not stop.is_set():
        if args.pid:
            try:
                fds = len(os.listdir(f"/proc/{args.pid}/fd"))
                stats.server_fds_max = max(stats.server_fds_max, fds)
            except OSError:
                pass
        if ticks % 5 == 0:
            write_status()
        ticks += 1
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.1)
        except asyncio.TimeoutError:
            pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_status(final=True)


def swarm(args):
    asyncio.run(swarm_main(args))


# --- 4b. the real sends ------------------------------------------------------------------------

def fd_sampler(pid, samples, stop):
    path = f"/proc/{pid}/fd"
    while not stop.is_set():
        try:
            samples.append(len(os.listdir(path)))
        except OSError:
            pass
        stop.wait(0.1)


def one_send(conn, token, i):
    conn.request("POST", "/v1/messages", body=send_body(i),
                 headers={"Authorization": f"Bearer {token}",
                          "Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode(errors="replace")
    return response.status, text


def sends(args):
    ctx = tls_context(args.ca, ["http/1.1"])
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=fd_sampler, args=(args.pid, samples, stop), daemon=True)
    sampler.start()

    keepalive = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx,
                                            timeout=args.limit)
    keepalive_ports = set()
    results = {"new": [], "keep-alive": []}   # (seconds, outcome)
    for i in range(args.count):
        kind = "new" if i % 2 == 0 else "keep-alive"
        started = time.perf_counter()
        try:
            if kind == "new":
                conn = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx,
                                                   timeout=args.limit)
                try:
                    status, text = one_send(conn, args.token, i)
                finally:
                    conn.close()
            else:
                status, text = one_send(keepalive, args.token, i)
                if keepalive.sock is not None:
                    keepalive_ports.add(keepalive.sock.getsockname()[1])
            outcome = str(status) if status == 201 else f"{status} {error_code(text)}"
        except Exception as exc:  # noqa: BLE001
            outcome = type(exc).__name__
            if kind == "keep-alive":
                keepalive.close()
        results[kind].append((time.perf_counter() - started, outcome))
    keepalive.close()
    stop.set()
    sampler.join()

    everything = results["new"] + results["keep-alive"]
    ok201 = sum(1 for _, o in everything if o == "201")
    slow = sum(1 for s, _ in everything if s > args.limit)
    for kind, rows in [("new connections", results["new"]),
                       ("keep-alive", results["keep-alive"]), ("all", everything)]:
        ms = [s * 1000 for s, _ in rows]
        print(f"     {kind:16s} n={len(rows):3d} 201={sum(1 for _, o in rows if o == '201'):3d}"
              f"  p50={percentile(ms, 50):7.1f} ms  p99={percentile(ms, 99):7.1f} ms"
              f"  max={max(ms):7.1f} ms", flush=True)
    verdict(ok201 == len(everything) and slow == 0,
            f"{args.count} sends under the slow-client flood answer 201 within {args.limit:g} s",
            f"201: {ok201}/{len(everything)}, over {args.limit:g} s: {slow}, outcomes: "
            f"{tally(o for _, o in everything)}")
    verdict(len(keepalive_ports) == 1,
            "the authenticated keep-alive connection keeps its place",
            f"{len(results['keep-alive'])} sends over {len(keepalive_ports)} connection(s)")
    if samples:
        print(f"     server open fds during the sends: min {min(samples)}, max {max(samples)} "
              f"({len(samples)} samples)", flush=True)


# --- 5. idle h2 --------------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = struct.pack(">I", 0)[1:] + bytes([0x4, 0x0]) + struct.pack(">I", 0)
FRAME_NAMES = {0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS", 6: "PING",
               7: "GOAWAY", 8: "WINDOW_UPDATE"}


def idle_h2(args):
    ctx = tls_context(args.ca, ["h2"])
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=args.idle + 30)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    alpn = sock.selected_alpn_protocol()
    # The client connection preface (RFC 9113 section 3.4): the magic, then a SETTINGS frame.
    sock.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
    started = time.monotonic()
    data, how = b"", "?"
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                how = "EOF"
                break
            data += chunk
    except socket.timeout:
        how = "still open"
    except (ssl.SSLError, OSError) as exc:
        how = type(exc).__name__
    elapsed = time.monotonic() - started
    frames, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        frames.append(FRAME_NAMES.get(data[offset + 3], str(data[offset + 3])))
        offset += 9 + length
    ok = alpn == "h2" and how != "still open" and args.idle - 0.5 <= elapsed <= args.idle + 2.5
    verdict(ok, f"h2 connection with only the preface closed after idle_timeout_seconds = "
                f"{args.idle:g}",
            f"ALPN {alpn}, closed ({how}) after {elapsed:.2f} s "
            f"(expected {args.idle - 0.5:g}-{args.idle + 2.5:g} s); server sent: "
            f"{' '.join(frames) or 'nothing'}")


# --- 4c. the server log's rate-limited lines -------------------------------------------------

def log_rate(args):
    """Lines of `args.log` containing `args.pattern` must be at least `args.every` seconds
    apart. consentry compares whole seconds (`now - last >= 10`), and so does this."""
    import datetime
    import re
    stamp = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z")
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    seconds = []
    with open(args.log, errors="replace") as f:
        for line in f:
            line = ansi.sub("", line)
            if args.pattern in line:
                found = stamp.search(line)
                if found:
                    when = datetime.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")
                    seconds.append(int(when.replace(tzinfo=datetime.timezone.utc).timestamp()))
    gaps = [b - a for a, b in zip(seconds, seconds[1:])]
    ok = all(gap >= args.every for gap in gaps)
    verdict(ok, f'server log: "{args.pattern}" at most once per {args.every} s',
            f"{len(seconds)} line(s), gaps between them (s): {gaps or 'none'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--ca", required=True)
        return p

    p = common(sub.add_parser("requests-cases"))
    p.add_argument("--token", required=True)
    p.add_argument("--tries", type=int, default=10)
    p.set_defaults(run=requests_cases)

    p = common(sub.add_parser("httpx-cases"))
    p.add_argument("--token", required=True)
    p.add_argument("--tries", type=int, default=20)
    p.set_defaults(run=httpx_cases)

    p = common(sub.add_parser("swarm"))
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--reconnect", type=float, default=1.0)
    p.add_argument("--status", required=True)
    p.add_argument("--pid", type=int, default=0, help="the server's, to sample its open fds")
    p.set_defaults(run=swarm)

    p = common(sub.add_parser("sends"))
    p.add_argument("--token", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--limit", type=float, default=5.0)
    p.add_argument("--pid", type=int, required=True)
    p.set_defaults(run=sends)

    p = common(sub.add_parser("idle-h2"))
    p.add_argument("--idle", type=float, required=True)
    p.set_defaults(run=idle_h2)

    p = sub.add_parser("log-rate")
    p.add_argument("--log", required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--every", type=int, default=10)
    p.set_defaults(run=log_rate)

    args = parser.parse_args()
    args.run(args)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
