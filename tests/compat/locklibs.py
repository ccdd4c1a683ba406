"""Python lock libraries against two proxies over the same masters.

    python locklibs.py --lib python-redis-lock|pottery|aioredlock [--protocol 2] --a HOST:PORT --b HOST:PORT

Each library's own flow: acquire through A, contention through B, its way of looking at a lock,
extend, release, and (python-redis-lock) a blocked acquire through B woken by the release
through A. Prints `version <lib> <version>`, `ok <check>` for each check that passed, and exits
1 with `FAIL <check>: <reason>` at the first mismatch; `skip <reason>` when the library cannot
run on this Python.
"""

import argparse
import asyncio
import importlib.metadata
import sys
import threading
import time
import traceback
import uuid

import redis


class Mismatch(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def connect(args, addr, **extra):
    host, port = addr.rsplit(":", 1)
    kwargs = {"host": host, "port": int(port), "socket_timeout": 10}
    if args.protocol:
        kwargs["protocol"] = args.protocol
    kwargs.update(extra)
    return redis.Redis(**kwargs)


def python_redis_lock(args):
    import redis_lock

    print(f"version python-redis-lock {importlib.metadata.version('python-redis-lock')}", flush=True)
    a = connect(args, args.a)
    # BLPOP blocks: no socket timeout on the waiter's connection.
    b = connect(args, args.b, socket_timeout=None)
    name = f"report-{uuid.uuid4().hex[:8]}"
    lock = redis_lock.Lock(a, name, expire=10)
    expect(lock.acquire(blocking=False), "acquire through A")
    print("ok acquire")
    other = redis_lock.Lock(b, name, expire=10)
    expect(not other.acquire(blocking=False), "acquire through B while held")
    expect(other.locked(), "locked() through B")
    expect(other.get_owner_id() == lock.id, "get_owner_id() through B")
    print("ok contention")
    lock.extend(expire=20)
    pttl = b.pttl(f"lock:{name}")
    expect(10_000 < pttl <= 20_000, f"PTTL after extend(20): {pttl}")
    try:
        other.extend(expire=20)
        raise Mismatch("extend() by another owner did not raise")
    except redis_lock.NotAcquired:
        pass
    print("ok extend")
    try:
        other.release()
        raise Mismatch("release() by another owner did not raise")
    except redis_lock.NotAcquired:
        pass
    print("ok not_owner")
    # A blocked acquire through B (BLPOP on the signal list, for up to `expire` seconds) wakes
    # on the release through A, not when the lock would expire.
    acquired = {}

    def wait():
        acquired["ok"] = other.acquire(blocking=True)
        acquired["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    expect("ok" not in acquired, "the blocked acquire returned while the lock was held")
    released = time.monotonic()
    lock.release()
    waiter.join(15)
    expect(not waiter.is_alive(), "the blocked acquire is still waiting")
    expect(acquired.get("ok") is True, "the blocked acquire failed")
    woke = acquired["at"] - released
    expect(woke < 1.0, f"woken {woke:.3f} s after the release")
    print(f"ok woken_by_release {woke * 1000:.0f} ms")
    expect(not lock.acquire(blocking=False), "acquire through A while B holds it")
    other.reset()
    expect(not other.locked(), "locked() after reset()")
    print("ok reset")
    with redis_lock.Lock(a, name, expire=5):
        expect(redis_lock.Lock(b, name).locked(), "context manager holds it")
    expect(not redis_lock.Lock(b, name).locked(), "context manager released it")
    print("ok context_manager")
    # Renewed every 2/3 of its 1 s expiry by its EXTEND script: held well past it.
    renewed = redis_lock.Lock(a, name, expire=1, auto_renewal=True)
    expect(renewed.acquire(blocking=False), "acquire with auto_renewal")
    time.sleep(2.5)
    expect(redis_lock.Lock(b, name).locked(), "an auto-renewed lock expired")
    renewed.release()
    print("ok auto_renewal")


def pottery(args):
    from pottery import Redlock, ReleaseUnlockedLock

    print(f"version pottery {importlib.metadata.version('pottery')}", flush=True)
    a, b = connect(args, args.a), connect(args, args.b)
    key = f"printer-{uuid.uuid4().hex[:8]}"
    lock = Redlock(key=key, masters={a}, auto_release_time=10)
    expect(lock.acquire(blocking=False), "acquire through A")
    print("ok acquire")
    other = Redlock(key=key, masters={b}, auto_release_time=10)
    expect(not other.acquire(blocking=False), "acquire through B while held")
    print("ok contention")
    # Seconds of validity left, as pottery computes them from the masters' replies.
    held = lock.locked()
    expect(5 < held <= 10, f"locked() through A: {held}")
    expect(other.locked() == 0, f"locked() by another owner: {other.locked()}")
    print("ok locked")
    lock.extend()
    expect(lock.locked() > 5, "locked() after extend()")
    print("ok extend")
    lock.release()
    expect(lock.locked() == 0, "locked() after release()")
    try:
        lock.release()
        raise Mismatch("a second release() did not raise")
    except ReleaseUnlockedLock:
        pass
    expect(other.acquire(blocking=False), "acquire through B after the release")
    other.release()
    print("ok release")


async def aioredlock(args):
    try:
        from aioredlock import Aioredlock, LockError
    except Exception as e:  # noqa: BLE001 - aioredlock 0.7 imports modules Python 3.12 removed
        print(f"skip aioredlock cannot be imported on Python {sys.version.split()[0]}: {e}")
        return
    print(f"version aioredlock {importlib.metadata.version('aioredlock')}", flush=True)

    def manager(addr):
        host, port = addr.rsplit(":", 1)
        return Aioredlock(
            [{"host": host, "port": int(port)}],
            retry_count=3,
            retry_delay_min=0.05,
            retry_delay_max=0.1,
        )

    a, b = manager(args.a), manager(args.b)
    resource = f"mailer-{uuid.uuid4().hex[:8]}"
    try:
        lock = await a.lock(resource, lock_timeout=10)
        expect(lock.valid, "lock() through A")
        print("ok acquire")
        try:
            await b.lock(resource, lock_timeout=10)
            raise Mismatch("lock() through B while held did not raise")
        except LockError:
            pass
        expect(await b.is_locked(resource), "is_locked() through B")
        print("ok contention")
        await a.extend(lock, lock_timeout=20)
        expect(await a.is_locked(lock), "is_locked() after extend()")
        print("ok extend")
        await a.unlock(lock)
        expect(not await b.is_locked(resource), "is_locked() after unlock()")
        again = await b.lock(resource, lock_timeout=10)
        await b.unlock(again)
        print("ok release")
    finally:
        await a.destroy()
        await b.destroy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["python-redis-lock", "pottery", "aioredlock"], required=True)
    parser.add_argument("--protocol", type=int, choices=[2, 3])
    parser.add_argument("--a", required=True, help="first proxy, HOST:PORT")
    parser.add_argument("--b", required=True, help="second proxy over the same masters")
    args = parser.parse_args()
    try:
        if args.lib == "python-redis-lock":
            python_redis_lock(args)
        elif args.lib == "pottery":
            pottery(args)
        else:
            asyncio.run(aioredlock(args))
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way
        print(f"FAIL {args.lib}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()
        return 1
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
