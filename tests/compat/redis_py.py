"""redis-py's Lock and raw lock commands against two proxies over the same masters.

    python redis_py.py --mode sync|asyncio [--protocol 2] --a HOST:PORT --b HOST:PORT

Without --protocol the client keeps its default (RESP3 in redis-py 8). One flow serves both the
sync and the asyncio client: every client call goes through `w()`, which awaits it only when
the asyncio client returned an awaitable. Prints `ok <check>` for each check that passed and
exits 1 with `FAIL <check>: <reason>` at the first mismatch.
"""

import argparse
import asyncio
import inspect
import re
import sys
import time
import traceback

import redis
import redis.asyncio
from redis.exceptions import LockNotOwnedError


class Mismatch(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


async def w(value):
    """The result of a client call: awaited for the asyncio client, as is for the sync one."""
    return await value if inspect.isawaitable(value) else value


def in_range(value, low, high, what):
    """low < value <= high, for TTLs that shrink while the test runs."""
    expect(isinstance(value, int) and low < value <= high, f"{what}: {value!r} not in ({low}, {high}]")


async def raises(exc_type, make_call, what):
    try:
        await w(make_call())
    except exc_type:
        return
    raise Mismatch(f"{what}: no {exc_type.__name__}")


def connect(args, addr):
    host, port = addr.rsplit(":", 1)
    cls = redis.asyncio.Redis if args.mode == "asyncio" else redis.Redis
    kwargs = {"host": host, "port": int(port), "socket_timeout": 10}
    # Only when asked: the default protocol is part of what is tested.
    if args.protocol:
        kwargs["protocol"] = args.protocol
    return cls(**kwargs)


async def check_handshake(a, b, args):
    for r in (a, b):
        expect(await w(r.ping()) is True, "PING")
        info = await w(r.client_info())
        want = str(args.protocol or 3)
        expect(str(info.get("resp")) == want, f"proxy sees resp={info.get('resp')}, want {want}")


async def check_lock_flow(a, b, args):
    """Acquire via A; B sees it held and is refused; extend, reacquire, release via A."""
    name = "py:flow"
    la = a.lock(name, timeout=5)
    lb = b.lock(name, timeout=5)
    expect(await w(la.acquire(blocking=False)) is True, "acquire via A")
    expect(re.fullmatch(rb"[0-9a-f]{32}", la.local.token), f"token {la.local.token!r}")
    expect(await w(la.owned()) is True, "owned() via A")
    expect(await w(la.locked()) is True, "locked() via A")
    print("ok acquire")

    expect(await w(lb.locked()) is True, "locked() via B")
    expect(await w(lb.owned()) is False, "owned() via B")
    expect(await w(b.get(name)) == la.local.token, "GET via B returns A's token")
    expect(await w(lb.acquire(blocking=False)) is False, "non-blocking acquire via B")
    print("ok contention_via_b")

    in_range(await w(b.pttl(name)), 3000, 5000, "PTTL via B")
    in_range(await w(b.ttl(name)), 2, 5, "TTL via B")
    expect(await w(b.exists(name)) == 1, "EXISTS via B")
    print("ok pttl_ttl_exists")

    start = time.monotonic()
    got = await w(lb.acquire(blocking=True, blocking_timeout=0.5))
    waited = time.monotonic() - start
    expect(got is False, "blocking acquire via B while A holds")
    expect(0.3 <= waited < 3, f"blocking_timeout=0.5 returned after {waited:.2f}s")
    print("ok blocking_timeout_expires")

    expect(await w(la.extend(3)) is True, "extend(3)")
    in_range(await w(b.pttl(name)), 5000, 8000, "PTTL after extend(3) adds to the TTL")
    print("ok extend_add")

    expect(await w(la.extend(2, replace_ttl=True)) is True, "extend(2, replace_ttl=True)")
    in_range(await w(b.pttl(name)), 0, 2000, "PTTL after extend(2, replace_ttl=True)")
    print("ok extend_replace")

    expect(await w(la.reacquire()) is True, "reacquire()")
    in_range(await w(b.pttl(name)), 2000, 5000, "PTTL after reacquire() to timeout=5")
    print("ok reacquire")

    await w(la.release())
    expect(await w(la.locked()) is False, "locked() via A after release")
    expect(await w(lb.locked()) is False, "locked() via B after release")
    expect(await w(b.get(name)) is None, "GET via B after release")
    expect(await w(b.pttl(name)) == -2, "PTTL after release")
    expect(await w(b.ttl(name)) == -2, "TTL after release")
    expect(await w(b.exists(name)) == 0, "EXISTS after release")
    print("ok release")

    expect(await w(lb.acquire(blocking=False)) is True, "acquire via B after A released")
    expect(await w(la.locked()) is True, "locked() via A while B holds")
    expect(await w(a.lock(name, timeout=5).acquire(blocking=False)) is False, "acquire via A while B holds")
    await w(lb.release())
    print("ok acquire_via_b_after_release")


async def check_blocking_acquire(a, b, args):
    """A blocking acquire via B gets the lock once A's short lock expires."""
    name = "py:blocking"
    la = a.lock(name, timeout=1)
    expect(await w(la.acquire(blocking=False)) is True, "acquire via A")
    lb = b.lock(name, timeout=5)
    start = time.monotonic()
    got = await w(lb.acquire(blocking=True, blocking_timeout=5))
    waited = time.monotonic() - start
    expect(got is True, "blocking acquire via B within blocking_timeout=5")
    expect(0.3 <= waited < 3, f"acquired after {waited:.2f}s, expected about 1s (A's TTL)")
    expect(await w(lb.owned()) is True, "owned() via B")
    await w(lb.release())
    print("ok blocking_acquire")


async def check_context_manager(a, b, args):
    name = "py:with"
    lock = a.lock(name, timeout=5)
    if args.mode == "asyncio":
        async with lock:
            expect(await b.get(name) == lock.local.token, "held inside async with")
    else:
        with lock:
            expect(b.get(name) == lock.local.token, "held inside with")
    expect(await w(b.exists(name)) == 0, "released on leaving the block")
    print("ok context_manager")


async def check_default_ttl(a, b, args):
    """timeout=None sends `SET name token NX`: the proxy gives it the default TTL."""
    name = "py:default-ttl"
    lock = a.lock(name)
    expect(await w(lock.acquire(blocking=False)) is True, "acquire without timeout")
    in_range(await w(b.pttl(name)), args.default_ttl_ms - 5000, args.default_ttl_ms, "PTTL of a lock without timeout")
    await w(lock.release())
    expect(await w(b.exists(name)) == 0, "released")
    print("ok default_ttl")


async def check_lost_lock(a, b, args):
    """A lock deleted under its holder, or expired and taken, cannot be extended or released."""
    name = "py:lost"
    la = a.lock(name, timeout=5)
    expect(await w(la.acquire(blocking=False)) is True, "acquire via A")
    expect(await w(b.delete(name)) == 1, "DEL via B of a held lock")
    expect(await w(b.delete(name)) == 0, "DEL via B of a free key")
    expect(await w(la.owned()) is False, "owned() after DEL")
    await raises(LockNotOwnedError, lambda: la.extend(1), "extend of a deleted lock")
    await raises(LockNotOwnedError, lambda: la.reacquire(), "reacquire of a deleted lock")
    await raises(LockNotOwnedError, lambda: la.release(), "release of a deleted lock")
    print("ok lost_lock_deleted")

    # Expired, then taken through B: the first holder's release must fail. (Waiting for B to
    # get the lock, rather than for EXISTS to say 0, proves the key is gone on the masters.)
    short = a.lock("py:expiring", timeout=0.3)
    expect(await w(short.acquire(blocking=False)) is True, "acquire with timeout=0.3")
    taker = b.lock("py:expiring", timeout=5)
    expect(await w(taker.acquire(blocking=True, blocking_timeout=3)) is True, "acquire via B after expiry")
    await raises(LockNotOwnedError, lambda: short.release(), "release of an expired lock")
    expect(await w(taker.owned()) is True, "B still owns it")
    await w(taker.release())
    print("ok lost_lock_expired")


async def check_lock_commands(a, b, args):
    """The proxy's own LOCK/UNLOCK/EXTEND/LOCKTTL through execute_command, across proxies."""
    key = "py:cmd"
    token = await w(a.execute_command("LOCK", key, 5000))
    expect(isinstance(token, bytes) and re.fullmatch(rb"[0-9a-f]{32}", token), f"LOCK token {token!r}")
    expect(await w(b.execute_command("LOCK", key, 5000)) is None, "LOCK via B while held")
    expect(await w(b.lock(key).locked()) is True, "redis-py locked() sees a LOCK-taken lock")
    in_range(await w(b.execute_command("LOCKTTL", key)), 3000, 5000, "LOCKTTL via B")
    expect(await w(b.execute_command("EXTEND", key, token, 9000)) == 1, "EXTEND via B")
    in_range(await w(a.execute_command("LOCKTTL", key)), 5000, 9000, "LOCKTTL after EXTEND")
    expect(await w(b.execute_command("UNLOCK", key, b"0" * 32)) == 0, "UNLOCK with a wrong token")
    expect(await w(b.execute_command("UNLOCK", key, token)) == 1, "UNLOCK via B with A's token")
    expect(await w(a.execute_command("UNLOCK", key, token)) == 0, "second UNLOCK")
    expect(await w(a.execute_command("LOCKTTL", key)) == -2, "LOCKTTL after UNLOCK")
    print("ok lock_unlock_commands")


CHECKS = [
    check_handshake,
    check_lock_flow,
    check_blocking_acquire,
    check_context_manager,
    check_default_ttl,
    check_lost_lock,
    check_lock_commands,
]


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["sync", "asyncio"], required=True)
    parser.add_argument("--protocol", type=int, choices=[2, 3])
    parser.add_argument("--a", required=True, help="first proxy, HOST:PORT")
    parser.add_argument("--b", required=True, help="second proxy over the same masters")
    parser.add_argument("--default-ttl-ms", type=int, default=30000)
    args = parser.parse_args()
    print(f"version redis-py {redis.__version__}", flush=True)
    a, b = connect(args, args.a), connect(args, args.b)
    try:
        for check in CHECKS:
            try:
                await check(a, b, args)
            except Exception as e:  # noqa: BLE001 - any failure is reported the same way
                print(f"FAIL {check.__name__}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc()
                return 1
            sys.stdout.flush()
    finally:
        for r in (a, b):
            await w(r.aclose() if args.mode == "asyncio" else r.close())
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
