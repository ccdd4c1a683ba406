//! The key schema: every name the proxy writes on a master, made here and nowhere else.
//!
//! Under the configured prefix `P` (default `redlock:`):
//! - `P{db}:{key}` — a client's lock `key` in database `db`: holds the token, with the lock's TTL
//!   (a mutex, or a read/write lock's writer); or the read lock's readers, a sorted set of
//!   tokens scored by expiry (`SHARED`); or a semaphore's count, a hash (`PERMITS n`);
//! - `Ppermit:{db}:{i}:{key}` — slot `i` of the semaphore `key` (`PERMITS n`, `i` < `n`): an
//!   ordinary lock key, holding one permit's token;
//! - `Pwriters:{db}:{key}` — exists while a writer waits for the read/write lock `key`
//!   (`LOCK ... WAIT`), naming each waiting writer's token: new readers are refused meanwhile;
//! - `Pwaiting:{db}:{key}` — exists while some proxy waits for that lock: its releases are then
//!   published on `Preleased`, which every proxy subscribes to;
//! - `Pfence:{db}:{key}` — the lock's fence counter (`LOCK ... FENCE`), removed after
//!   `fence_idle_ms` unused (the floor is raised above it first);
//! - `Pfence-floor` — the floor under every fence counter;
//! - `Prun` — the run marker: the `run_id` the master's data was written in.
//!
//! Lock keys continue the prefix with a database number, so no lock key can take any of the
//! other names, and the database number ends at the first `:`, so no two (database, key) pairs
//! share a name.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::Names;
use crate::redlock::LockKey;

/// The names under one prefix.
#[derive(Debug, Clone)]
pub struct Schema {
    prefix: Bytes,
}

impl Schema {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Schema {
        Schema {
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
        }
    }

    /// The names of `key`'s lock in database `db`: its key and its waiting marker, built in one
    /// allocation.
    pub fn lock(&self, db: u32, key: &[u8]) -> LockKey {
        const WAITING: &[u8] = b"waiting:";
        let mut num = itoa::Buffer::new();
        let db = num.format(db).as_bytes();
        let len = self.prefix.len() + db.len() + 1 + key.len();
        let mut out = BytesMut::with_capacity(2 * len + WAITING.len());
        self.put(&mut out, b"", db, key);
        self.put(&mut out, WAITING, db, key);
        let key = out.split_to(len).freeze();
        LockKey {
            key,
            marker: out.freeze(),
        }
    }

    /// The key that holds the token of `key`'s lock in database `db` (without its marker).
    pub fn key(&self, db: u32, key: &[u8]) -> Bytes {
        self.one(b"", db, key)
    }

    /// Where the masters keep the fence counter of `key`'s lock in database `db`.
    pub fn fence(&self, db: u32, key: &[u8]) -> Bytes {
        self.one(b"fence:", db, key)
    }

    /// The slots of the semaphore `key` in database `db` with `permits` permits, slot 0 first.
    pub fn permits(&self, db: u32, key: &[u8], permits: u32) -> Vec<Bytes> {
        (0..permits).map(|i| self.permit(db, key, i)).collect()
    }

    /// Slot `slot` of the semaphore `key` in database `db`.
    pub fn permit(&self, db: u32, key: &[u8], slot: u32) -> Bytes {
        let (mut db_num, mut slot_num) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (db, slot) = (
            db_num.format(db).as_bytes(),
            slot_num.format(slot).as_bytes(),
        );
        const PERMIT: &[u8] = b"permit:";
        let len = self.prefix.len() + PERMIT.len() + db.len() + 1 + slot.len() + 1 + key.len();
        let mut out = BytesMut::with_capacity(len);
        self.put(&mut out, PERMIT, db, slot);
        out.put_u8(b':');
        out.put_slice(key);
        out.freeze()
    }

    /// The marker naming the writers that wait for the read/write lock `key` in database `db`.
    pub fn writers(&self, db: u32, key: &[u8]) -> Bytes {
        self.one(b"writers:", db, key)
    }

    /// One name of `kind`, in a buffer sized once.
    fn one(&self, kind: &[u8], db: u32, key: &[u8]) -> Bytes {
        let mut num = itoa::Buffer::new();
        let db = num.format(db).as_bytes();
        let len = self.prefix.len() + kind.len() + db.len() + 1 + key.len();
        let mut out = BytesMut::with_capacity(len);
        self.put(&mut out, kind, db, key);
        out.freeze()
    }

    /// The names the masters need besides each lock's own.
    pub fn names(&self) -> Names {
        let name = |suffix: &str| Bytes::from([&self.prefix[..], suffix.as_bytes()].concat());
        Names {
            release_channel: name("released"),
            fence_pattern: name("fence:*"),
            fence_floor: name("fence-floor"),
            run_marker: name("run"),
            lineage: name("lineage"),
        }
    }

    fn put(&self, out: &mut BytesMut, kind: &[u8], db: &[u8], key: &[u8]) {
        out.put_slice(&self.prefix);
        out.put_slice(kind);
        out.put_slice(db);
        out.put_u8(b':');
        out.put_slice(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let s = Schema::new("redlock:");
        let lock = s.lock(3, b"orders:42");
        assert_eq!(&lock.key[..], b"redlock:3:orders:42");
        assert_eq!(&lock.marker[..], b"redlock:waiting:3:orders:42");
        assert_eq!(s.key(3, b"orders:42"), lock.key);
        assert_eq!(&s.fence(0, b"k")[..], b"redlock:fence:0:k");
        let slots = s.permits(3, b"orders:42", 2);
        assert_eq!(&slots[0][..], b"redlock:permit:3:0:orders:42");
        assert_eq!(&slots[1][..], b"redlock:permit:3:1:orders:42");
        assert_eq!(&s.writers(0, b"k")[..], b"redlock:writers:0:k");
        let names = s.names();
        assert_eq!(&names.release_channel[..], b"redlock:released");
        assert_eq!(&names.fence_pattern[..], b"redlock:fence:*");
        assert_eq!(&names.fence_floor[..], b"redlock:fence-floor");
        assert_eq!(&names.run_marker[..], b"redlock:run");
        assert_eq!(&names.lineage[..], b"redlock:lineage");
    }

    #[test]
    fn databases_and_kinds_never_share_a_name() {
        let s = Schema::new("p:");
        assert_ne!(s.lock(1, b"1:k").key, s.lock(11, b":k").key);
        assert_ne!(s.lock(0, b"k").key, s.fence(0, b"k"));
        // The slot number ends at the first `:` after the database's.
        assert_ne!(s.permits(0, b"1:k", 1)[0], s.permits(0, b":k", 2)[1]);
        // A client key cannot reach the other kinds: lock keys continue with a digit.
        assert!(s.lock(0, b"x").key[2].is_ascii_digit());
    }
}
