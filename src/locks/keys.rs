//! The key schema: every name the proxy writes on a master, made here and nowhere else.
//!
//! Under the configured prefix `P` (default `redlock:`), with `T` the lock's hash tag (below):
//! - `P{T}db:key` — a client's lock `key` in database `db`: holds the token, with the lock's TTL
//!   (a mutex, or a read/write lock's writer); or the read lock's readers, a sorted set of
//!   tokens scored by expiry (`SHARED`); or a semaphore's count, a hash (`PERMITS n`);
//! - `P{T}permit:db:i:key` — slot `i` of the semaphore `key` (`PERMITS n`, `i` < `n`): an
//!   ordinary lock key, holding one permit's token;
//! - `P{T}writers:db:key` — exists while a writer waits for the read/write lock `key`
//!   (`LOCK ... WAIT`), naming each waiting writer's token: new readers are refused meanwhile;
//! - `P{T}waiting:db:key` — exists while some proxy waits for that lock: its releases are then
//!   published on `Preleased`, which every proxy subscribes to;
//! - `P{T}fence:db:key` — the lock's fence counter (`LOCK ... FENCE`), removed after
//!   `fence_idle_ms` unused (the floor is raised above it first);
//! - `Pfence-floor` — the floor under every fence counter;
//! - `Prun` — the run marker: the `run_id` the master's data was written in;
//! - `Plineage` — a quarantine recorded on the master.
//!
//! The hash tag `T` is four hex digits the proxy derives from the database and the key, so every
//! name of one lock sits in one Redis Cluster slot whatever braces the client's key holds: Redis
//! hashes only what is between the first `{` and the next `}`, and the prefix holds no brace
//! (checked when the configuration loads). Four hex digits of 14 bits: a lock's names go to one
//! of 16384 tags, spread like slots, so a cluster's shards share the locks evenly.
//!
//! On a Redis Cluster node the last four names are the node's own and carry a tag the proxy
//! picks from the slot map, one whose slot the node owns (`Names::on_node`): `P{N}run` and so on.
//!
//! Lock keys continue the tag with a database number, so no lock key can take any of the other
//! names, and the database number ends at the first `:`, so no two (database, key) pairs share a
//! name.

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
        let len = self.prefix.len() + TAG_LEN + db.len() + 1 + key.len();
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
        let len =
            self.prefix.len() + TAG_LEN + PERMIT.len() + db.len() + 1 + slot.len() + 1 + key.len();
        let mut out = BytesMut::with_capacity(len);
        out.put_slice(&self.prefix);
        out.put_slice(&tag(db, key));
        out.put_slice(PERMIT);
        out.put_slice(db);
        out.put_u8(b':');
        out.put_slice(slot);
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
        let len = self.prefix.len() + TAG_LEN + kind.len() + db.len() + 1 + key.len();
        let mut out = BytesMut::with_capacity(len);
        self.put(&mut out, kind, db, key);
        out.freeze()
    }

    /// The names the masters need besides each lock's own.
    pub fn names(&self) -> Names {
        let name = |suffix: &str| Bytes::from([&self.prefix[..], suffix.as_bytes()].concat());
        Names {
            prefix: self.prefix.clone(),
            sharded: false,
            release_channel: name("released"),
            fence_pattern: name("{????}fence:*"),
            fence_floor: name("fence-floor"),
            run_marker: name("run"),
            lineage: name("lineage"),
        }
    }

    fn put(&self, out: &mut BytesMut, kind: &[u8], db: &[u8], key: &[u8]) {
        out.put_slice(&self.prefix);
        out.put_slice(&tag(db, key));
        out.put_slice(kind);
        out.put_slice(db);
        out.put_u8(b':');
        out.put_slice(key);
    }
}

/// Length of `{T}`.
const TAG_LEN: usize = 6;

/// `{T}` for the lock `key` in database `db`: 14 bits of FNV-1a over `db:key` in hex. Any
/// proxy computes the same tag, and no byte of it is a brace.
fn tag(db: &[u8], key: &[u8]) -> [u8; TAG_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h: u32 = 0x811c_9dc5;
    for &b in db.iter().chain(b":").chain(key) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let t = h & 0x3fff;
    let digit = |shift: u32| HEX[((t >> shift) & 0xf) as usize];
    [b'{', digit(12), digit(8), digit(4), digit(0), b'}']
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let s = Schema::new("redlock:");
        let lock = s.lock(3, b"orders:42");
        assert_eq!(&lock.key[..], b"redlock:{276f}3:orders:42");
        assert_eq!(&lock.marker[..], b"redlock:{276f}waiting:3:orders:42");
        assert_eq!(s.key(3, b"orders:42"), lock.key);
        assert_eq!(
            &s.fence(3, b"orders:42")[..],
            b"redlock:{276f}fence:3:orders:42"
        );
        let slots = s.permits(3, b"orders:42", 2);
        assert_eq!(&slots[0][..], b"redlock:{276f}permit:3:0:orders:42");
        assert_eq!(&slots[1][..], b"redlock:{276f}permit:3:1:orders:42");
        assert_eq!(
            &s.writers(3, b"orders:42")[..],
            b"redlock:{276f}writers:3:orders:42"
        );
        let names = s.names();
        assert_eq!(&names.release_channel[..], b"redlock:released");
        assert_eq!(&names.fence_pattern[..], b"redlock:{????}fence:*");
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
        assert!(s.lock(0, b"x").key[2 + TAG_LEN].is_ascii_digit());
    }

    #[test]
    fn a_locks_names_share_one_hash_tag_whatever_braces_the_key_holds() {
        let s = Schema::new("redlock:");
        for key in [&b"plain"[..], b"{user1}:cart", b"}{", b"{}", b"a{b}c{d}"] {
            let lock = s.lock(0, key);
            let fence = s.fence(0, key);
            let tag = |name: &[u8]| {
                let open = name.iter().position(|&b| b == b'{').unwrap();
                let close = open + name[open..].iter().position(|&b| b == b'}').unwrap();
                name[open + 1..close].to_vec()
            };
            assert_eq!(tag(&lock.key), tag(&lock.marker));
            assert_eq!(tag(&lock.key), tag(&fence));
            assert_eq!(tag(&lock.key).len(), 4, "{key:?}");
        }
        // Tags spread: 1000 keys fall on hundreds of tags.
        let tags: std::collections::HashSet<_> = (0..1000)
            .map(|i| s.key(0, format!("k{i}").as_bytes())[8..14].to_vec())
            .collect();
        assert!(tags.len() > 900, "{}", tags.len());
    }
}
