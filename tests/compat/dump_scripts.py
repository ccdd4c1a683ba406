"""Prints the Lua lock scripts of the installed redis-py, one `<name> <body as hex>` per line.
The sync and asyncio Lock classes each define their own copy; both are printed."""

import redis
import redis.asyncio.lock
import redis.lock

print(f"version redis-py {redis.__version__}")
for prefix, cls in (("redis-py", redis.lock.Lock), ("redis-py-asyncio", redis.asyncio.lock.Lock)):
    for name, attr in (("release", "LUA_RELEASE_SCRIPT"), ("extend", "LUA_EXTEND_SCRIPT"), ("reacquire", "LUA_REACQUIRE_SCRIPT")):
        print(f"{prefix}-{name} {getattr(cls, attr).encode().hex()}")
