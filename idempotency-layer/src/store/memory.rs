//! The in-process store: sharded, bounded by entries and bytes, expiring by TTL.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::mem::size_of;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Begin, Fingerprint, LeaseToken, Store, StoreError, StoreKey};

/// Records in process memory: the embedded default, with the same semantics as the Redis store.
///
/// - **Concurrent**: records are spread over independently locked shards by key digest; no
///   operation takes a global lock.
/// - **Bounded**: at most [`max_entries`](MemoryStoreBuilder::max_entries) records and
///   [`max_bytes`](MemoryStoreBuilder::max_bytes) of stored results (plus a fixed per-record
///   overhead). When full, completed records are evicted: the soonest-expiring one of the
///   shard that needs room, else one from another shard. Only when nothing completed is left
///   anywhere is a new claim refused with [`StoreError::Full`]. Records in progress are never
///   evicted: that would let an operation run twice.
/// - **Expiring**: each shard keeps its records in expiry order, and each operation on a
///   shard drops a few of its expired records (at most 16 per heap), so a backlog is worked
///   off without stalling any one request; no timer or thread per key.
///
/// Waiters ([`Store::wait`]) are woken the moment a record completes or is released.
///
/// Cloning is cheap and shares the records.
///
/// ```
/// use idempotency_layer::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_entries(50_000)
///     .max_bytes(32 * 1024 * 1024)
///     .build();
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Configures a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    max_bytes: usize,
    shards: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, usize::from);
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            shards: (parallelism * 16).next_power_of_two().clamp(64, 1024),
        }
    }
}

impl MemoryStoreBuilder {
    /// The most records held at once. Default 100 000.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The most bytes held at once: stored results plus a fixed overhead per record. Default
    /// 64 MiB.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The number of independently locked shards, rounded up to a power of two. Default: 16
    /// per CPU, at least 64, so that no shard's table grows large enough for its resizing to
    /// stall the requests that wait on it.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1).next_power_of_two();
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..self.shards).map(|_| Mutex::default()).collect(),
                entries: AtomicUsize::new(0),
                in_progress: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                max_entries: self.max_entries,
                max_bytes: self.max_bytes,
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default bounds: 100 000 records, 64 MiB.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The number of records held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.entries.load(Relaxed)
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes accounted to the records held.
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Relaxed)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .field("max_entries", &self.inner.max_entries)
            .field("bytes", &self.bytes())
            .field("max_bytes", &self.inner.max_bytes)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    entries: AtomicUsize,
    /// Records in progress: never evicted, so the room they take is never there for a result.
    in_progress: AtomicUsize,
    bytes: AtomicUsize,
    max_entries: usize,
    max_bytes: usize,
}

/// A key digest; already uniformly distributed, so its first bytes are its hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Digest([u8; 32]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for DigestHasher {
    type Hasher = Self;

    fn build_hasher(&self) -> Self {
        Self::default()
    }
}

enum Entry {
    InProgress {
        token: LeaseToken,
        fingerprint: Fingerprint,
        expires: Instant,
        waiters: Option<Arc<Notify>>,
    },
    Completed {
        /// The holder's token, so that its retried completion is recognised as done.
        token: LeaseToken,
        fingerprint: Fingerprint,
        result: Bytes,
        expires: Instant,
    },
}

/// What a record costs besides its result: its key, its entry and its two heap slots.
const RECORD_OVERHEAD: usize =
    size_of::<Digest>() + size_of::<Entry>() + 2 * size_of::<Reverse<(Instant, Digest)>>();

impl Entry {
    fn size(&self) -> usize {
        match self {
            Entry::InProgress { .. } => RECORD_OVERHEAD,
            Entry::Completed { result, .. } => RECORD_OVERHEAD + result.len(),
        }
    }

    /// Whether the record's lease or TTL has not run out.
    fn is_live(&self, now: Instant) -> bool {
        match self {
            Entry::InProgress { expires, .. } | Entry::Completed { expires, .. } => *expires > now,
        }
    }

    fn live_lease(&self, now: Instant, token: LeaseToken) -> bool {
        matches!(self, Entry::InProgress { token: held, expires, .. } if *held == token && *expires > now)
    }
}

type ExpiryHeap = BinaryHeap<Reverse<(Instant, Digest)>>;

#[derive(Default)]
struct Shard {
    map: Records,
    /// Lease expiries of records in progress; stale slots are skipped when popped.
    leases: ExpiryHeap,
    /// Expiries of completed records, also the eviction order.
    completed: ExpiryHeap,
}

impl Shard {
    fn remove(&mut self, digest: &Digest, inner: &Inner) -> Option<Entry> {
        take(&mut self.map, digest, inner)
    }

    /// Drops records whose lease or TTL has run out, looking at no more than [`PURGE_STEP`]
    /// due slots of each expiry heap, so that no operation pays for a backlog at once; returns
    /// how many records it dropped.
    fn purge(&mut self, now: Instant, inner: &Inner) -> usize {
        let leases = purge_due(
            &mut self.leases,
            &mut self.map,
            now,
            inner,
            |entry| matches!(entry, Entry::InProgress { expires, .. } if *expires <= now),
        );
        let completed = purge_due(
            &mut self.completed,
            &mut self.map,
            now,
            inner,
            |entry| matches!(entry, Entry::Completed { expires, .. } if *expires <= now),
        );
        leases + completed
    }

    /// Evicts the completed record that expires soonest; false when there is none.
    fn evict_completed(&mut self, inner: &Inner) -> bool {
        while let Some(Reverse((at, digest))) = self.completed.pop() {
            if matches!(self.map.get(&digest), Some(Entry::Completed { expires, .. }) if *expires == at)
            {
                self.remove(&digest, inner);
                return true;
            }
        }
        false
    }

    /// Charges `entries` and `bytes` to the store's budget, evicting this shard's completed
    /// records as needed. False when the budget is still exceeded.
    fn charge(&mut self, inner: &Inner, entries: usize, bytes: usize) -> bool {
        loop {
            if inner.try_charge(entries, bytes) {
                return true;
            }
            if !self.evict_completed(inner) {
                return false;
            }
        }
    }
}

type Records = HashMap<Digest, Entry, DigestHasher>;

/// Removes a record, returns its budget and wakes its waiters.
fn take(map: &mut Records, digest: &Digest, inner: &Inner) -> Option<Entry> {
    let entry = map.remove(digest)?;
    inner.entries.fetch_sub(1, Relaxed);
    inner.bytes.fetch_sub(entry.size(), Relaxed);
    if let Entry::InProgress { waiters, .. } = &entry {
        inner.in_progress.fetch_sub(1, Relaxed);
        if let Some(waiters) = waiters {
            waiters.notify_waiters();
        }
    }
    Some(entry)
}

/// How many due slots of one expiry heap an operation looks at, at most. Every operation adds
/// at most one slot to each heap, so the heaps drain many times faster than they fill.
const PURGE_STEP: usize = 16;

/// Pops up to [`PURGE_STEP`] slots that are due; removes each record that `due` still holds
/// expired (a slot is stale when its record completed, was extended or is gone).
fn purge_due(
    heap: &mut ExpiryHeap,
    map: &mut Records,
    now: Instant,
    inner: &Inner,
    due: impl Fn(&Entry) -> bool,
) -> usize {
    let mut purged = 0;
    for _ in 0..PURGE_STEP {
        match heap.peek() {
            Some(&Reverse((at, digest))) if at <= now => {
                heap.pop();
                if map.get(&digest).is_some_and(&due) {
                    take(map, &digest, inner);
                    purged += 1;
                }
            }
            _ => break,
        }
    }
    purged
}

impl Inner {
    fn shard_of(&self, key: &StoreKey) -> (usize, Digest) {
        let digest = Digest(*key.digest());
        let [.., a, b, c, d, e, f, g, h] = digest.0;
        let index = u64::from_le_bytes([a, b, c, d, e, f, g, h]) as usize & (self.shards.len() - 1);
        (index, digest)
    }

    fn try_charge(&self, entries: usize, bytes: usize) -> bool {
        if entries > 0 && self.entries.fetch_add(entries, Relaxed) + entries > self.max_entries {
            self.entries.fetch_sub(entries, Relaxed);
            return false;
        }
        if self.bytes.fetch_add(bytes, Relaxed) + bytes > self.max_bytes {
            self.bytes.fetch_sub(bytes, Relaxed);
            self.entries.fetch_sub(entries, Relaxed);
            return false;
        }
        true
    }

    /// Frees room in shards other than `except`, one shard locked at a time: drops expired
    /// records, else evicts one completed record. False when nothing could be freed.
    fn free_elsewhere(&self, except: usize, now: Instant) -> bool {
        let others = (1..self.shards.len()).map(|step| (except + step) % self.shards.len());
        for index in others {
            let mut shard = self.shards[index].lock();
            if shard.purge(now, self) > 0 || shard.evict_completed(self) {
                return true;
            }
        }
        false
    }

    /// Locks the shard of `key`, runs `op` on it, and when `op` needs room that the shard
    /// alone cannot free, frees it elsewhere (with the shard unlocked) and runs `op` again.
    fn with_room<T>(
        &self,
        key: &StoreKey,
        mut op: impl FnMut(&mut MutexGuard<'_, Shard>, Digest, Instant) -> Result<T, NeedRoom>,
    ) -> Result<T, StoreError> {
        let (index, digest) = self.shard_of(key);
        loop {
            let now = Instant::now();
            {
                let mut shard = self.shards[index].lock();
                shard.purge(now, self);
                if let Ok(done) = op(&mut shard, digest, now) {
                    return Ok(done);
                }
            }
            if !self.free_elsewhere(index, now) {
                return Err(StoreError::Full(
                    "every record held is in progress; none can be evicted",
                ));
            }
        }
    }
}

/// `now + duration`, for any duration: the longest ones are cut to a century.
fn deadline(now: Instant, duration: Duration) -> Instant {
    now + duration.min(crate::lease::LONGEST)
}

/// `op` of [`Inner::with_room`] could not charge its record to the budget.
struct NeedRoom;

impl Store for MemoryStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let inner = &*self.inner;
        inner.with_room(key, |shard, digest, now| {
            // The purge works off a bounded share of a backlog, so an expired record may still
            // be here: it is as good as absent.
            if shard
                .map
                .get(&digest)
                .is_some_and(|entry| !entry.is_live(now))
            {
                shard.remove(&digest, inner);
            }
            match shard.map.get(&digest) {
                Some(Entry::Completed {
                    fingerprint: stored,
                    result,
                    ..
                }) => {
                    return Ok(if stored == fingerprint {
                        Begin::Completed(result.clone())
                    } else {
                        Begin::Mismatch
                    });
                }
                Some(Entry::InProgress {
                    fingerprint: stored,
                    expires,
                    ..
                }) => {
                    return Ok(if stored == fingerprint {
                        Begin::InProgress {
                            retry_after: expires.saturating_duration_since(now),
                        }
                    } else {
                        Begin::Mismatch
                    });
                }
                None => {}
            }
            if !shard.charge(inner, 1, RECORD_OVERHEAD) {
                return Err(NeedRoom);
            }
            let expires = deadline(now, lease);
            inner.in_progress.fetch_add(1, Relaxed);
            shard.map.insert(
                digest,
                Entry::InProgress {
                    token,
                    fingerprint: *fingerprint,
                    expires,
                    waiters: None,
                },
            );
            shard.leases.push(Reverse((expires, digest)));
            Ok(Begin::Acquired(token))
        })
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        // The records in progress (the caller's among them, which this result replaces) stay
        // whatever is evicted: if the result does not fit beside them, evicting completed
        // records would not make room. Refuse without evicting anything.
        let in_progress = inner.in_progress.load(Relaxed).max(1);
        if in_progress * RECORD_OVERHEAD + result.len() > inner.max_bytes {
            return Err(StoreError::Full(
                "the result does not fit in the store's max_bytes beside the records in progress",
            ));
        }
        inner.with_room(key, |shard, digest, now| {
            let fingerprint = match shard.map.get(&digest) {
                Some(Entry::InProgress {
                    token: held,
                    expires,
                    fingerprint,
                    ..
                }) if *held == token && *expires > now => *fingerprint,
                // Completed by this very holder: a retried completion is done.
                Some(Entry::Completed {
                    token: held,
                    expires,
                    ..
                }) if *held == token && *expires > now => return Ok(Ok(())),
                _ => return Ok(Err(StoreError::LeaseLost)),
            };
            if !shard.charge(inner, 0, result.len()) {
                return Err(NeedRoom);
            }
            let expires = deadline(now, ttl);
            let previous = shard.map.insert(
                digest,
                Entry::Completed {
                    token,
                    fingerprint,
                    result: result.clone(),
                    expires,
                },
            );
            shard.completed.push(Reverse((expires, digest)));
            inner.in_progress.fetch_sub(1, Relaxed);
            if let Some(Entry::InProgress {
                waiters: Some(waiters),
                ..
            }) = previous
            {
                waiters.notify_waiters();
            }
            Ok(Ok(()))
        })?
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        let (index, digest) = self.inner.shard_of(key);
        let now = Instant::now();
        let mut shard = self.inner.shards[index].lock();
        shard.purge(now, &self.inner);
        match shard.map.get(&digest) {
            Some(entry) if entry.live_lease(now, token) => {
                shard.remove(&digest, &self.inner);
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let (index, digest) = self.inner.shard_of(key);
        let now = Instant::now();
        let mut shard = self.inner.shards[index].lock();
        shard.purge(now, &self.inner);
        match shard.map.get_mut(&digest) {
            Some(Entry::InProgress {
                token: held,
                expires,
                ..
            }) if *held == token && *expires > now => {
                *expires = deadline(now, lease);
                let expires = *expires;
                shard.leases.push(Reverse((expires, digest)));
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn wait(&self, key: &StoreKey, at_most: Duration) -> Result<(), StoreError> {
        let (index, digest) = self.inner.shard_of(key);
        let in_progress = |shard: &mut Shard, now| match shard.map.get_mut(&digest) {
            Some(Entry::InProgress {
                expires, waiters, ..
            }) if *expires > now => Some((
                waiters.get_or_insert_with(Default::default).clone(),
                expires.saturating_duration_since(now),
            )),
            _ => None,
        };
        let now = Instant::now();
        let Some((waiters, lease_left)) = in_progress(&mut self.inner.shards[index].lock(), now)
        else {
            return Ok(());
        };
        let mut notified = pin!(waiters.notified());
        notified.as_mut().enable();
        // The record may have changed between the first look and `enable`: look again, now
        // that no notification can be missed.
        let still = in_progress(&mut self.inner.shards[index].lock(), now)
            .is_some_and(|(current, _)| Arc::ptr_eq(&current, &waiters));
        if still {
            let _ = tokio::time::timeout(at_most.min(lease_left), notified).await;
        }
        Ok(())
    }
}
