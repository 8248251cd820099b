"""Load test: a real uvicorn process of the service on loopback, many clients, mixed requests.

Steady phase: ``--clients`` concurrent clients (32) for ``--seconds`` (60) over every inference
endpoint (/encode, /reconstruct, /denoise, /classify, /cluster) and every input form (JSON,
PNG files in multipart, ``.npy``), each client sending its next request as soon as the last one
is answered. Any non-2xx answer or exception is an error. It reports p50/p99 per endpoint and
overall, and the server's RSS (``VmRSS`` of ``/proc/<pid>/status``, sampled every second): its
growth from the mean of the first quarter of the samples to the mean of the last (goal < 10 %).

Overload phase: a second server whose per-model queue is small
(``AESERVE_BATCH_MAX_QUEUE_IMAGES``, ``--overload-queue-images``) gets far more clients
(``--overload-clients``) sending large batches for ``--overload-seconds``; the service must shed
the excess with 503 and ``Retry-After`` at once, not time out: no client error, and the 503s'
p99 under ``--overload-max-p99`` seconds.

Attack phase: a third server (its head and body timeouts ``--attack-timeout`` seconds, so that they act
within the phase) serves ``--attack-clients`` normal clients (the steady phase's requests) in windows of
``--attack-seconds``, alternately alone and beside an attack, ``--attack-rounds`` times each: idle
connections, half-sent heads, heads and bodies trickled a byte at a time (each attacker reconnects when
the server closes it), and clients posting costly images made here (blank 4000x4000 16-bit PNGs, about
40 KB that inflate to 32 MB each, and a 4000x4000 progressive JPEG). It reports normal traffic's p99
during the attack beside its p99 without it; the goal: at most ``--attack-max-ratio`` (2) times.

Bounded in time (the phases' seconds, client timeouts) and in count (``--max-requests``, the attackers'
numbers); loopback only. Prints markdown tables; exits 1 when the steady phase had an error, the RSS
grew by ``--max-rss-growth`` percent or more, the overload phase did not answer 503 quickly, or normal
traffic erred or slowed beyond the ratio under attack.

    .venv/bin/python benchmarks/load.py                      # 60 s, 32 clients, then the overload burst
    .venv/bin/python benchmarks/load.py --seconds 3 --clients 4
    .venv/bin/python benchmarks/load.py --only-attack --attack-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import io
import multiprocessing
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import local_server
from scripts.api_examples import draw_digit

ENDPOINTS = ("/encode", "/reconstruct", "/denoise", "/classify", "/cluster")
FORMS = ("json", "png", "npy")


@dataclass(frozen=True)
class Request:
    """One prepared request: its endpoint and input form, and httpx's keyword arguments."""

    endpoint: str
    form: str
    kwargs: dict


@dataclass
class Stats:
    """Latencies (seconds) by endpoint, errors with a few examples, statuses by code."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    statuses: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    examples: list[str] = field(default_factory=list)
    retry_after_missing: int = 0
    exceptions: int = 0  # no answer at all: refused, reset, timed out
    total: int = 0

    def error(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{endpoint}: {what}")


def digits() -> np.ndarray:
    """Three drawn digits (0, 1, 7) as MNIST-style uint8 28x28 images, made the way the examples are."""
    from app.imaging import mnist_style

    return np.stack(
        [(mnist_style(np.asarray(draw_digit(d, d), np.float32) / 255) * 255).round() for d in (0, 1, 7)]
    ).astype(np.uint8)


def png_of(image: np.ndarray | object) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def mixed_requests(seed: int = 0) -> list[Request]:
    """Every endpoint in every input form, with batch sizes 1..16 (npy), 1..4 (JSON), 1..2 files (PNG)."""
    rng = np.random.default_rng(seed)
    base = digits()
    photos = [png_of(draw_digit(d, d)) for d in (0, 1, 7)]
    requests = []
    for endpoint in ENDPOINTS:
        params = {"noise_std": "0.3", "seed": "1"} if endpoint == "/denoise" else {}
        for count in (1, 4, 16):
            batch = base[rng.integers(0, 3, count)]
            headers = {"content-type": "application/x-npy"}
            requests.append(Request(endpoint, "npy", {"content": npy_of(batch), "headers": headers, "params": params}))
        for count in (1, 4):
            images = (base[rng.integers(0, 3, count)] / 255.0).round(4).tolist()
            requests.append(Request(endpoint, "json", {"json": {"images": images}, "params": params}))
        flat = base[:2].reshape(2, -1).astype(int).tolist()
        requests.append(Request(endpoint, "json", {"json": {"images": flat, "pixel_scale": 255}, "params": params}))
        for count in (1, 2):
            files = [("file", (f"d{i}.png", photos[i % 3], "image/png")) for i in range(count)]
            requests.append(Request(endpoint, "png", {"files": files, "params": params}))
    return requests


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    """Append the server's RSS every second until ``stop`` is set."""
    while not stop.is_set():
        samples.append(rss_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def client(
    http: httpx.AsyncClient,
    requests: list[Request],
    deadline: float,
    stats: Stats,
    rng: random.Random,
    limit: int,
    honour_retry_after: bool = True,
) -> None:
    """Send the next request as soon as the last one is answered (or, after a 503, once its ``Retry-After``
    has passed), until the deadline or the count limit."""
    while time.perf_counter() < deadline and stats.total < limit:
        request = rng.choice(requests)
        stats.total += 1
        started = time.perf_counter()
        try:
            response = await http.post(request.endpoint, **request.kwargs)
        except httpx.HTTPError as exc:
            stats.error(request.endpoint, f"{type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - started
        stats.statuses[response.status_code].append(elapsed)
        if not 200 <= response.status_code < 300:
            stats.error(request.endpoint, f"{response.status_code} {response.text[:200]}")
        elif response.headers.get("x-model") is None:
            stats.error(request.endpoint, "200 without X-Model")
        else:
            stats.latencies[request.endpoint].append(elapsed)
        if response.status_code == 503:
            if "retry-after" not in response.headers:
                stats.retry_after_missing += 1
            elif honour_retry_after:  # as a client should; the wait is not part of the latency
                await asyncio.sleep(
                    min(float(response.headers["retry-after"]), max(0.0, deadline - time.perf_counter()))
                )


async def drive(
    base: str,
    requests: list[Request],
    clients: int,
    seconds: float,
    limit: int,
    timeout: float,
    seed: int,
    honour_retry_after: bool = True,
) -> tuple[Stats, float]:
    """``clients`` clients for ``seconds``; returns the statistics and the wall time taken."""
    stats = Stats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        for request in requests:  # each request once, untimed: first-call costs out of the figures
            (await http.post(request.endpoint, **request.kwargs)).raise_for_status()
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                client(http, requests, deadline, stats, random.Random(seed + i), limit, honour_retry_after)
                for i in range(clients)
            )
        )
    return stats, time.perf_counter() - started


async def steady(base: str, pid: int, args: argparse.Namespace) -> tuple[Stats, float, list[int]]:
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, samples, stop))
    try:
        stats, wall = await drive(
            base, mixed_requests(args.seed), args.clients, args.seconds, args.max_requests, args.timeout, args.seed
        )
    finally:
        stop.set()
        await sampler
    return stats, wall, samples


class RawConnection:
    """One keep-alive HTTP/1.1 connection over asyncio streams, for the overload burst: hundreds of them
    cost the load generator far less than httpx's pool, so the latencies measured are the server's."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[str, str]]:
        """Send one request (``head`` ends with the blank line); the status and headers of its answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        headers = {}
        while (line := (await self.reader.readline()).strip()) != b"":
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1]), headers

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def raw_client(
    connection: RawConnection, head: bytes, body: bytes, deadline: float, stats: Stats, limit: int, honour: bool
) -> None:
    """The overload client: like :func:`client`, over one raw connection, with one request."""
    try:
        while time.perf_counter() < deadline and stats.total < limit:
            stats.total += 1
            started = time.perf_counter()
            try:
                status, headers = await asyncio.wait_for(connection.request(head, body), timeout=30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
                stats.exceptions += 1
                stats.error("/reconstruct", f"{type(exc).__name__}: {exc}")
                await connection.close()
                continue
            stats.statuses[status].append(time.perf_counter() - started)
            if status not in (200, 503):
                stats.error("/reconstruct", str(status))
            if status == 503:
                if "retry-after" not in headers:
                    stats.retry_after_missing += 1
                elif honour:
                    wait = min(float(headers["retry-after"]), max(0.0, deadline - time.perf_counter()))
                    await asyncio.sleep(wait)
    finally:
        await connection.close()


async def overload(base: str, args: argparse.Namespace) -> tuple[Stats, float]:
    """``--overload-clients`` raw clients sending npy batches of ``--overload-images`` to mnist-conv."""
    host, port = base.removeprefix("http://").split(":")
    batch = np.random.default_rng(1).integers(0, 256, (args.overload_images, 28, 28), dtype=np.uint8)
    body = npy_of(batch)
    head = (
        f"POST /reconstruct?model=mnist-conv HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-npy\r\n"
        f"Accept: application/x-npy\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    stats = Stats()
    started = time.perf_counter()
    deadline = started + args.overload_seconds
    await asyncio.gather(
        *(
            raw_client(
                RawConnection(host, int(port)),
                head,
                body,
                deadline,
                stats,
                args.max_requests,
                not args.ignore_retry_after,
            )
            for _ in range(args.overload_clients)
        )
    )
    return stats, time.perf_counter() - started


@dataclass
class AttackStats:
    """Per kind of attacker: connections opened, closed by the server (with how long each lived), answers."""

    opened: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lives: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answers: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # could not connect or send


def costly_images() -> list[tuple[str, bytes, str]]:
    """Files that cost a decoder much for their size: blank 4000x4000 16-bit PNGs and a progressive JPEG."""
    from PIL import Image

    blank16 = Image.new("I;16", (4000, 4000), 0)
    noise = np.random.default_rng(0).integers(0, 256, (500, 500), dtype=np.uint8)
    photo = Image.fromarray(noise).resize((4000, 4000), Image.Resampling.NEAREST)
    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG", progressive=True, quality=90)
    return [("blank16.png", png_of(blank16), "image/png"), ("progressive.jpg", jpeg.getvalue(), "image/jpeg")]


async def hostile(
    host: str, port: int, kind: str, first: bytes, rest: bytes, gap: float, stop: asyncio.Event, stats: AttackStats
) -> None:
    """One hostile connection at a time until ``stop``: it sends ``first``, then ``rest`` a byte every ``gap`` s
    (nothing more when ``rest`` is empty), and opens another once the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            stats.failures[kind] += 1
            await asyncio.sleep(0.1)
            continue
        stats.opened[kind] += 1
        opened = time.perf_counter()
        try:
            if first:
                writer.write(first)
                await writer.drain()
            at = 0
            while not stop.is_set():
                wait = asyncio.ensure_future(reader.read(65536))
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({wait, stopping}, timeout=gap, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if wait in done:
                    answer = wait.result()
                    if answer.startswith(b"HTTP/1.1 "):
                        stats.answers[kind][int(answer.split(b" ", 2)[1])] += 1
                    stats.lives[kind].append(time.perf_counter() - opened)
                    break
                wait.cancel()
                if rest and at < len(rest):
                    writer.write(rest[at : at + 1])
                    await writer.drain()
                    at += 1
        except (OSError, ConnectionError):
            stats.lives[kind].append(time.perf_counter() - opened)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def costly_client(base: str, files: list, stop: asyncio.Event, stats: AttackStats, limit: int) -> None:
    """Posts the costly images to /encode, one request after another, until ``stop`` (at most ``limit``)."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for _ in range(limit):
            if stop.is_set():
                return
            stats.opened["costly images"] += 1
            try:
                answer = await http.post("/encode", files=files)
            except httpx.HTTPError:
                stats.failures["costly images"] += 1
                continue
            stats.answers["costly images"][answer.status_code] += 1


async def attackers(base: str, args: argparse.Namespace, seconds: float) -> AttackStats:
    """Every attacker for ``seconds``, then each stops at its next step; their statistics."""
    host, port = base.removeprefix("http://").split(":")
    images = costly_images()
    files = [("file", images[i % len(images)]) for i in range(args.attack_images)]
    head = f"POST /encode HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-npy\r\n".encode()
    body_head = head + b"Content-Length: 1048576\r\n\r\n"
    kinds = [
        ("idle", b"", b"", args.attack_connections),
        ("half-sent head", head, b"", args.attack_connections),
        ("trickled head", head, b"X-Slow: " + b"s" * 4096, args.attack_connections // 2),
        ("trickled body", body_head + b"\x93NUMPY", b"0" * 4096, args.attack_connections // 2),
    ]
    stats, stop = AttackStats(), asyncio.Event()
    tasks = [
        asyncio.create_task(hostile(host, int(port), kind, first, rest, 0.2, stop, stats))
        for kind, first, rest, count in kinds
        for _ in range(count)
    ]
    tasks += [
        asyncio.create_task(costly_client(base, files, stop, stats, args.max_requests))
        for _ in range(args.attack_costly_clients)
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def attackers_process(base: str, args: argparse.Namespace, seconds: float) -> dict:
    """:func:`attackers` in a process of its own, so that building and sending their requests never delays
    the normal clients whose latency is measured; the statistics as plain dictionaries (picklable)."""
    if seconds <= 0:
        return {}  # the pool's start: the process and its imports made before the first window
    stats = asyncio.run(attackers(base, args, seconds))
    return {
        "opened": dict(stats.opened),
        "lives": dict(stats.lives),
        "answers": {kind: dict(counts) for kind, counts in stats.answers.items()},
        "failures": dict(stats.failures),
    }


def add_attack(total: AttackStats, part: dict) -> None:
    """Add one window's attack statistics (:func:`attackers_process`) to ``total``."""
    for kind, n in part.get("opened", {}).items():
        total.opened[kind] += n
    for kind, lives in part.get("lives", {}).items():
        total.lives[kind].extend(lives)
    for kind, counts in part.get("answers", {}).items():
        for code, n in counts.items():
            total.answers[kind][code] += n
    for kind, n in part.get("failures", {}).items():
        total.failures[kind] += n


async def attack_phase(base: str, args: argparse.Namespace) -> tuple[Stats, Stats, AttackStats]:
    """Normal clients in windows alone and under attack, alternately; their statistics by side, and the attack's.

    The attackers run in a second process, started before the first window."""
    requests = mixed_requests(args.seed)
    limits = httpx.Limits(max_connections=args.attack_clients, max_keepalive_connections=args.attack_clients)
    alone, attacked, attack = Stats(), Stats(), AttackStats()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        await loop.run_in_executor(pool, attackers_process, base, args, 0.0)
        async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=limits) as http:
            for request in requests:  # each request once, untimed: first-call costs out of the figures
                (await http.post(request.endpoint, **request.kwargs)).raise_for_status()
            for round_ in range(2 * args.attack_rounds):
                attacking = round_ % 2 == 1
                under_way = None
                if attacking:
                    seconds = args.attack_seconds + 0.5
                    under_way = loop.run_in_executor(pool, attackers_process, base, args, seconds)
                    await asyncio.sleep(0.5)  # the attack under way before the window opens
                stats = attacked if attacking else alone
                deadline = time.perf_counter() + args.attack_seconds
                await asyncio.gather(
                    *(
                        client(
                            http,
                            requests,
                            deadline,
                            stats,
                            random.Random(args.seed + round_ * 100 + i),
                            args.max_requests,
                        )
                        for i in range(args.attack_clients)
                    )
                )
                if under_way is not None:
                    add_attack(attack, await under_way)
    return alone, attacked, attack


def rss_growth(samples: list[int]) -> tuple[float, float, float]:
    """Mean RSS (MiB) of the first and the last quarter of the samples, and the growth in percent."""
    quarter = max(1, len(samples) // 4)
    first, last = np.mean(samples[:quarter]) / 1024, np.mean(samples[-quarter:]) / 1024
    return first, last, (last / first - 1) * 100


def ms(seconds: float) -> str:
    return "-" if np.isnan(seconds) else f"{seconds * 1000:.1f}"


def steady_table(stats: Stats, wall: float) -> str:
    rows = ["| endpoint | requests | errors | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    everything: list[float] = []
    for endpoint in ENDPOINTS:
        values = stats.latencies.get(endpoint, [])
        everything += values
        count = len(values) + stats.errors.get(endpoint, 0)
        rows.append(
            f"| {endpoint} | {count} | {stats.errors.get(endpoint, 0)} | {count / wall:.1f} | "
            f"{ms(percentile(values, 50))} | {ms(percentile(values, 99))} |"
        )
    errors = sum(stats.errors.values())
    rows.append(
        f"| **all** | {len(everything) + errors} | {errors} | {(len(everything) + errors) / wall:.1f} | "
        f"{ms(percentile(everything, 50))} | {ms(percentile(everything, 99))} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run both phases, print the tables; 0 when every goal holds, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the steady phase")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="most requests of a phase")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (s)")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="RSS growth limit (percent)")
    parser.add_argument("--overload-seconds", type=float, default=5.0)
    parser.add_argument("--overload-clients", type=int, default=256)
    parser.add_argument("--overload-images", type=int, default=256, help="images per overload request")
    parser.add_argument("--overload-queue-images", type=int, default=512, help="the overload server's queue")
    parser.add_argument("--overload-max-p99", type=float, default=1.0, help="p99 of the 503s must be below (s)")
    parser.add_argument("--ignore-retry-after", action="store_true", help="overload clients resend at once after a 503")
    parser.add_argument("--attack-seconds", type=float, default=5.0, help="length of each attack-phase window")
    parser.add_argument("--attack-rounds", type=int, default=2, help="windows on each side (alone, attacked)")
    parser.add_argument("--attack-clients", type=int, default=4, help="normal clients in the attack phase")
    parser.add_argument("--attack-connections", type=int, default=16, help="idle and half-sent-head connections")
    parser.add_argument("--attack-costly-clients", type=int, default=2, help="clients posting costly images")
    parser.add_argument("--attack-images", type=int, default=4, help="costly images per request")
    parser.add_argument("--attack-timeout", type=float, default=2.0, help="the attack server's head/body timeouts")
    parser.add_argument(
        "--attack-max-ratio", type=float, default=2.0, help="normal p99 under attack / alone must be below; 0: report"
    )
    parser.add_argument("--only-attack", action="store_true", help="run the attack phase only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    failures: list[str] = []
    if not args.only_attack:
        steady_and_overload(args, failures)
    attack(args, failures)
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    print("all goals hold" if not failures else f"{len(failures)} goal(s) missed")
    return 1 if failures else 0


def attack(args: argparse.Namespace, failures: list[str]) -> None:
    """The attack phase: run it, print its tables, add its missed goals to ``failures``."""
    env = {"AESERVE_HEAD_TIMEOUT_S": str(args.attack_timeout), "AESERVE_BODY_TIMEOUT_S": str(args.attack_timeout)}
    with (
        tempfile.TemporaryDirectory(prefix="aeserve-attack-") as folder,
        (Path(folder) / "attack.log").open("w") as log,
    ):
        process, base, _ = local_server.start("app.main:app", env=env, log=log)
        try:
            alone, attacked, hostile_stats = asyncio.run(attack_phase(base, args))
            alive = process.poll() is None
        finally:
            local_server.stop(process)
    print(
        f"\n## Attack: {args.attack_clients} normal clients, windows of {args.attack_seconds:g} s alone and under "
        f"attack, {args.attack_rounds} of each, alternating; head/body timeouts {args.attack_timeout:g} s\n"
    )
    print("| normal traffic | requests | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    p99 = {}
    for side, stats in (("alone", alone), ("under attack", attacked)):
        values = [v for endpoint in ENDPOINTS for v in stats.latencies.get(endpoint, [])]
        errors = sum(stats.errors.values())
        p99[side] = percentile(values, 99)
        print(f"| {side} | {len(values) + errors} | {errors} | {ms(percentile(values, 50))} | {ms(p99[side])} |")
        if errors:
            failures.append(f"{errors} errors of normal traffic {side}: {stats.examples}")
    ratio = p99["under attack"] / p99["alone"]
    print(f"\np99 under attack / alone: **{ratio:.2f}** (goal: below {args.attack_max_ratio:g})\n")
    print("| attacker | connections or requests | closed by the server | median life s | answers |")
    print("|---|---:|---:|---:|---|")
    for kind in ("idle", "half-sent head", "trickled head", "trickled body", "costly images"):
        lives = hostile_stats.lives.get(kind, [])
        answers = ", ".join(f"{code}: {n}" for code, n in sorted(hostile_stats.answers.get(kind, {}).items())) or "-"
        median = f"{np.median(lives):.1f}" if lives else "-"
        opened = hostile_stats.opened.get(kind, 0)
        print(f"| {kind} | {opened} | {len(lives) if kind != 'costly images' else '-'} | {median} | {answers} |")
    if args.attack_max_ratio and not ratio < args.attack_max_ratio:
        failures.append(
            f"normal p99 under attack is {ratio:.2f} times its p99 alone (goal < {args.attack_max_ratio:g})"
        )
    if not alive:
        failures.append("the attack server died")


def steady_and_overload(args: argparse.Namespace, failures: list[str]) -> None:
    """The steady and overload phases: run them, print their tables, add their missed goals to ``failures``."""
    with tempfile.TemporaryDirectory(prefix="aeserve-load-") as folder:
        log_path = Path(folder) / "steady.log"
        with log_path.open("w") as log:
            process, base, ready_s = local_server.start("app.main:app", log=log)
            try:
                stats, wall, samples = asyncio.run(steady(base, process.pid, args))
            finally:
                local_server.stop(process)
        first, last, growth = rss_growth(samples)
        print(f"## Steady phase: {args.clients} clients, {wall:.1f} s, mixed endpoints and input forms\n")
        print(f"Server ready in {ready_s:.1f} s (one uvicorn worker on loopback).\n")
        print(steady_table(stats, wall))
        print(
            f"\n| RSS samples | first quarter MiB | last quarter MiB | growth |\n|---:|---:|---:|---:|\n"
            f"| {len(samples)} | {first:.1f} | {last:.1f} | {growth:+.1f} % |"
        )
        if sum(stats.errors.values()):
            failures.append(f"{sum(stats.errors.values())} errors in the steady phase: {stats.examples}")
        if growth >= args.max_rss_growth:
            failures.append(f"RSS grew {growth:.1f} % (limit {args.max_rss_growth:g} %)")

        env = {"AESERVE_BATCH_MAX_QUEUE_IMAGES": str(args.overload_queue_images)}
        with (Path(folder) / "overload.log").open("w") as log:
            process, base, _ = local_server.start("app.main:app", env=env, log=log)
            try:
                burst, burst_wall = asyncio.run(overload(base, args))
                alive = process.poll() is None
            finally:
                local_server.stop(process)
    shed = burst.statuses.get(503, [])
    served = burst.statuses.get(200, [])
    exceptions = burst.exceptions
    other = sum(len(v) for code, v in burst.statuses.items() if code not in (200, 503))
    print(
        f"\n## Overload: {args.overload_clients} clients, {args.overload_images} images per request, "
        f"queue {args.overload_queue_images} images, {burst_wall:.1f} s\n"
    )
    print("| requests | 200 | 503 | other status | exceptions | 503 p50 ms | 503 p99 ms | 200 p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {burst.total} | {len(served)} | {len(shed)} | {other} | {exceptions} | {ms(percentile(shed, 50))} | "
        f"{ms(percentile(shed, 99))} | {ms(percentile(served, 99))} |"
    )
    if not shed:
        failures.append("the overload phase got no 503")
    elif percentile(shed, 99) >= args.overload_max_p99:
        failures.append(f"503 p99 {percentile(shed, 99):.3f} s (limit {args.overload_max_p99:g} s)")
    if exceptions or other:
        failures.append(f"overload: {exceptions} exceptions, {other} other statuses: {burst.examples}")
    if burst.retry_after_missing:
        failures.append(f"{burst.retry_after_missing} 503s without Retry-After")
    if not alive:
        failures.append("the overload server died")


if __name__ == "__main__":
    sys.exit(main())
