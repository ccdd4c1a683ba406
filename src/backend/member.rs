//! [`Member`]: one Redlock member as the running proxy holds it, whichever kind it is. The layers
//! above name this one type, so the same commands run over real masters in production and over
//! in-memory ones in their tests; each call goes straight to the member's own implementation.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;

use super::mem::MemMaster;
use super::redis::{ClusterMember, NodeStatus, RedisMaster};
use super::{Ask, BackendError, FencePage, HeldAs, KeyState, Master, MasterStatus, Take, Votes};
use crate::metrics::Histogram;

/// One Redlock member.
#[derive(Debug, Clone)]
pub enum Member {
    /// A Redis master over the network.
    Redis(RedisMaster),
    /// A master in memory (tests and benchmarks of the layers above).
    Mem(MemMaster),
    /// A Redis Cluster: each key's vote is its slot's master node's.
    Cluster(ClusterMember),
}

/// Calls the same method on whichever kind `$member` is; futures of the two kinds become one.
macro_rules! each {
    ($member:expr, $m:ident => $call:expr) => {
        match $member {
            Member::Redis($m) => Either::Left($call),
            Member::Mem($m) => Either::Right(Either::Left($call)),
            Member::Cluster($m) => Either::Right(Either::Right($call)),
        }
    };
}

impl Member {
    /// A snapshot of its health.
    pub fn status(&self) -> MasterStatus {
        match self {
            Member::Redis(m) => m.status(),
            Member::Mem(m) => m.status(),
            Member::Cluster(m) => m.status(),
        }
    }

    /// A cluster's slots covered by a master node, and the redirects (`MOVED`, `ASK`) it
    /// followed since start; `None` for a single master.
    pub fn cluster_counts(&self) -> Option<(usize, u64)> {
        match self {
            Member::Cluster(m) => Some((m.slots_covered(), m.redirects())),
            _ => None,
        }
    }

    /// A cluster's master nodes with their slots and health; `None` for a single master.
    pub fn nodes(&self) -> Option<Vec<NodeStatus>> {
        match self {
            Member::Cluster(m) => Some(m.nodes()),
            _ => None,
        }
    }

    /// Its requests' round trips; `None` for a master in memory, which has none.
    pub fn round_trip(&self) -> Option<&Histogram> {
        match self {
            Member::Redis(m) => Some(m.round_trip()),
            Member::Mem(_) | Member::Cluster(_) => None,
        }
    }

    /// Fence repairs completed on it.
    pub fn fence_repairs(&self) -> u64 {
        match self {
            Member::Redis(m) => m.fence_repairs(),
            Member::Mem(_) => 0,
            Member::Cluster(m) => m.fence_repairs(),
        }
    }
}

impl Master for Member {
    fn votes(&self) -> bool {
        match self {
            Member::Redis(m) => m.votes(),
            Member::Mem(m) => m.votes(),
            Member::Cluster(m) => m.votes(),
        }
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.acquire(key, token, ttl_ms))
    }

    fn release(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.release(key, marker, token))
    }

    fn mark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        each!(self, m => m.mark_waiting(key, marker, waiter, ms))
    }

    fn unmark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        each!(self, m => m.unmark_waiting(key, marker, waiter))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.extend(key, token, ttl_ms))
    }

    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.swap(key, token, new_token, ttl_ms))
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        each!(self, m => m.inspect(key))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        each!(self, m => m.read_fence(fence_key))
    }

    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<> {
        each!(self, m => m.held_as(key))
    }

    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        each!(self, m => m.acquire_permit(key, slots, base, ttl_ms, offset))
    }

    fn release_permit(
        &self,
        key: &[u8],
        marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.release_permit(key, marker, slots, base, keep))
    }

    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.extend_permit(key, slot, token, ttl_ms))
    }

    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<> {
        each!(self, m => m.extend_named_permit(key, slots, names, ttl_ms))
    }

    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        each!(self, m => m.acquire_shared(key, writers, token, ttl_ms))
    }

    fn release_shared(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.release_shared(key, marker, token))
    }

    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.extend_shared(key, token, ttl_ms))
    }

    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<> {
        each!(self, m => m.token_pttl(key, token))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        each!(self, m => m.acquire_fenced(key, fence_key, token, ttl_ms, fence))
    }

    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        each!(self, m => m.raise_fences(counters, floor))
    }

    fn sweep_fences(
        &self,
        cursor: &[u8],
        expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<> {
        each!(self, m => m.sweep_fences(cursor, expire_ms))
    }

    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<> {
        each!(self, m => m.fence_page(cursor))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        each!(self, m => m.raise_fence_floor(floor))
    }

    fn cast(&self, ask: Ask<'_>, ballot: &Arc<dyn Votes>, counts: bool) {
        match self {
            Member::Redis(m) => m.cast(ask, ballot, counts),
            Member::Mem(m) => m.cast(ask, ballot, counts),
            Member::Cluster(m) => m.cast(ask, ballot, counts),
        }
    }

    fn fences_lost(&self) -> bool {
        match self {
            Member::Redis(m) => m.fences_lost(),
            Member::Mem(m) => m.fences_lost(),
            Member::Cluster(m) => m.fences_lost(),
        }
    }

    fn fences_repaired(&self) {
        match self {
            Member::Redis(m) => m.fences_repaired(),
            Member::Mem(m) => m.fences_repaired(),
            Member::Cluster(m) => m.fences_repaired(),
        }
    }
}
