"""redis-py over TLS: its Lock through the proxy's TLS listener.

    python redis_py_tls.py --port PORT --ca CA.pem

Connects with ssl=True, verifying the proxy's certificate against the CA. Prints `ok <check>`
for each check that passed and exits 1 with `FAIL <check>: <reason>` at the first mismatch.
"""

import argparse
import sys

import redis


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    print(f"version {redis.__version__}")
    r = redis.Redis(
        host="127.0.0.1",
        port=args.port,
        ssl=True,
        ssl_ca_certs=args.ca,
        ssl_cert_reqs="required",
        socket_timeout=10,
    )
    checks = []
    try:
        checks.append("ping")
        if r.ping() is not True:
            raise AssertionError("PING did not answer")
        print("ok ping")
        checks.append("lock_held_release")
        first = r.lock("tls:py", timeout=10)
        second = r.lock("tls:py", timeout=10)
        if not first.acquire(blocking=False):
            raise AssertionError("the first acquire failed")
        if second.acquire(blocking=False):
            raise AssertionError("a held lock was granted again")
        first.release()
        if not second.acquire(blocking=False):
            raise AssertionError("the lock was not free after release")
        second.release()
        print("ok lock_held_release")
        checks.append("lock_command")
        token = r.execute_command("LOCK", "tls:raw", 10000)
        if not token or len(token) != 32:
            raise AssertionError(f"LOCK replied {token!r}")
        if r.execute_command("UNLOCK", "tls:raw", token) != 1:
            raise AssertionError("UNLOCK did not release")
        print("ok lock_command")
    except Exception as e:
        print(f"FAIL {checks[-1]}: {e!r}")
        sys.exit(1)
    print("done")


if __name__ == "__main__":
    main()
