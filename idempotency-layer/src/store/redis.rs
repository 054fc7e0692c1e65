//! The Redis store: many processes and machines share one idempotency state.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind, Value};

use super::{Begin, Fingerprint, LeaseToken, Store, StoreError, StoreKey};

/// Claim-or-read in one script: see `lua/begin.lua`.
static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/begin.lua")));
/// Complete, release and extend, fenced by the lease token: see `lua/fenced.lua`.
static FENCED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/fenced.lua")));

/// The record encoding's version byte; the scripts check it too.
const VERSION: u8 = 1;
/// Version, state, fingerprint, lease token: the head of every record.
const HEAD_LEN: usize = 2 + 32 + 16;

/// Records in Redis (standalone, or Redis Cluster with the `cluster` feature), shared by every
/// process that uses the same server and prefix.
///
/// - **One round trip per transition.** [`begin`](Store::begin) is one Lua script that claims
///   or reads (the fingerprint is compared inside it); `complete`, `release` and `extend` are
///   one script each that acts only while the caller's lease token matches. A first execution
///   costs 2 commands, a replay 1, a conflict 1, plus one `extend` per third of a lease while
///   the handler runs. Scripts run by SHA (`EVALSHA`) and are loaded again by themselves after
///   a restart or `SCRIPT FLUSH`.
/// - **One key per record**, passed to every script as `KEYS[1]`: every script touches one slot,
///   so the store runs unchanged on Redis Cluster, whose client follows `MOVED` and `ASK`.
/// - **TTLs on the key itself**, in milliseconds: the lease while in progress, the TTL once
///   completed. Redis expires them; nothing sweeps.
/// - **Never a hang.** Every command has a response timeout (default 500 ms); an unreachable
///   server is a [`StoreError::Unavailable`], and the connection reconnects in the background.
/// - **Waiting** ([`InFlight::Wait`](crate::InFlight::Wait)) polls: the layer calls `begin`
///   again with a backoff from 10 ms to 250 ms, within its bound.
///
/// Record encoding, version 1, the value of one Redis string:
///
/// ```text
/// u8 version = 1, u8 state ('P' in progress | 'C' completed), [u8; 32] fingerprint,
/// [u8; 16] lease token, then, once completed, the result
/// ```
///
/// A completed record keeps its holder's token, so a completion retried after its reply was
/// lost (a dropped connection) is recognised as done rather than refused.
///
/// A record of another version or shape is a [`StoreError::Corrupt`], never a panic.
///
/// # Durability
///
/// A primary that fails over before replicating a completed record forgets it, and a retry
/// would run the operation again. [`RedisStoreBuilder::wait_for_replicas`] closes that window:
/// `complete` then waits (`WAIT`) until that many replicas acknowledged the record, before the
/// response is released. On a standalone server the `WAIT` is pipelined with the completion, so
/// it costs no extra round trip, only the time those replicas take to acknowledge; on Redis
/// Cluster it is one more round trip, to the node that owns the key.
///
/// # Example
///
/// ```no_run
/// use idempotency_layer::{IdempotencyLayer, store::RedisStore};
///
/// # async fn run() -> Result<(), idempotency_layer::StoreError> {
/// let store = RedisStore::builder()
///     .key_prefix("payments-api:")
///     .open("redis://127.0.0.1:6379")
///     .await?;
/// let layer = IdempotencyLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: Arc<str>,
    replicas: Option<(u32, Duration)>,
}

/// Configures a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    prefix: String,
    response_timeout: Duration,
    connection_timeout: Duration,
    replicas: Option<(u32, Duration)>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            response_timeout: Duration::from_millis(500),
            connection_timeout: Duration::from_millis(500),
            replicas: None,
        }
    }
}

impl RedisStoreBuilder {
    /// Put before every Redis key this store writes, ahead of the layer's own key prefix.
    /// Default: none.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a command may wait for its reply before it fails. Default 500 ms.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long connecting may take. Default 500 ms.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Makes `complete` wait until `replicas` replicas acknowledged the record, at most
    /// `timeout`; fewer acknowledgements make it fail with [`StoreError::NotReplicated`]. The
    /// response timeout is raised above `timeout` where needed.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some((replicas, timeout));
        self
    }

    fn effective_response_timeout(&self) -> Duration {
        match self.replicas {
            Some((_, wait)) => self.response_timeout.max(wait + Duration::from_millis(250)),
            None => self.response_timeout,
        }
    }

    /// Connects to the Redis server at `url` (`redis://host:port/db`, `rediss://` for TLS where
    /// the `redis` crate was built with it).
    pub async fn open(self, url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::unavailable)?;
        self.from_client(client).await
    }

    /// Connects through an existing client, with an auto-reconnecting connection manager.
    pub async fn from_client(self, client: redis::Client) -> Result<RedisStore, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.effective_response_timeout()))
            .set_connection_timeout(Some(self.connection_timeout))
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(self.build(Connection::Standalone(manager)))
    }

    /// Uses an existing connection manager as it is configured.
    pub fn from_connection_manager(self, manager: ConnectionManager) -> RedisStore {
        self.build(Connection::Standalone(manager))
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:port` URLs) belong to.
    #[cfg(feature = "cluster")]
    pub async fn open_cluster<I, N>(self, nodes: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = N>,
        N: redis::IntoConnectionInfo,
    {
        let connection = redis::cluster::ClusterClient::builder(nodes)
            .response_timeout(self.effective_response_timeout())
            .connection_timeout(self.connection_timeout)
            .build()
            .map_err(StoreError::unavailable)?
            .get_async_connection()
            .await
            .map_err(StoreError::unavailable)?;
        Ok(self.build(Connection::Cluster(connection)))
    }

    /// Uses an existing Redis Cluster connection as it is configured.
    #[cfg(feature = "cluster")]
    pub fn from_cluster_connection(
        self,
        connection: redis::cluster_async::ClusterConnection,
    ) -> RedisStore {
        self.build(Connection::Cluster(connection))
    }

    fn build(self, connection: Connection) -> RedisStore {
        RedisStore {
            connection,
            prefix: Arc::from(self.prefix),
            replicas: self.replicas,
        }
    }
}

impl RedisStore {
    /// Starts configuring a store.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects to `url` with the defaults.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::builder().open(url).await
    }

    /// Connects to the Redis Cluster that `nodes` belong to, with the defaults.
    #[cfg(feature = "cluster")]
    pub async fn open_cluster<I, N>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = N>,
        N: redis::IntoConnectionInfo,
    {
        Self::builder().open_cluster(nodes).await
    }

    /// The Redis key that holds the record of `key`.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn fenced(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        operation: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<(), StoreError> {
        let mut invocation = FENCED.key(self.redis_key(key));
        invocation.arg(&token.as_u128().to_be_bytes()[..]);
        operation(&mut invocation);
        let done: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(StoreError::unavailable)?;
        fenced_outcome(done)
    }

    /// Completion and its `WAIT` pipelined on one standalone connection: one round trip, and
    /// the `WAIT` always counts the acknowledgements of this very write (a reconnect between
    /// two separate commands could make it count a fresh connection's, none).
    async fn complete_replicated(
        &self,
        manager: &ConnectionManager,
        (required, timeout): (u32, Duration),
        key: &StoreKey,
        token: LeaseToken,
        result: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut invocation = FENCED.key(self.redis_key(key));
        invocation
            .arg(&token.as_u128().to_be_bytes()[..])
            .arg("complete")
            .arg(result)
            .arg(millis(ttl));
        let mut pipeline = redis::pipe();
        pipeline
            .invoke_script(&invocation)
            .cmd("WAIT")
            .arg(required)
            .arg(millis(timeout));
        let mut connection = manager.clone();
        let replies: Result<(i64, i64), RedisError> =
            match pipeline.query_async(&mut connection).await {
                // A pipeline does not load scripts by itself (after a restart or SCRIPT FLUSH).
                Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    invocation
                        .load_async(&mut connection)
                        .await
                        .map_err(StoreError::unavailable)?;
                    pipeline.query_async(&mut connection).await
                }
                replies => replies,
            };
        let (done, acknowledged) = replies.map_err(StoreError::unavailable)?;
        fenced_outcome(done)?;
        replicated(acknowledged, required)
    }

    /// `WAIT` for the configured replicas, on the connection (and, in a cluster, the node) that
    /// wrote `redis_key`.
    async fn wait_for_replicas(&self, redis_key: &str) -> Result<(), StoreError> {
        let Some((required, timeout)) = self.replicas else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(required).arg(millis(timeout));
        let acknowledged: i64 = match &self.connection {
            Connection::Standalone(manager) => wait.query_async(&mut manager.clone()).await,
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(redis_key, SlotAddr::Master);
                cluster
                    .clone()
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
                    .and_then(|value| redis::from_redis_value(value).map_err(RedisError::from))
            }
        }
        .map_err(StoreError::unavailable)?;
        #[cfg(not(feature = "cluster"))]
        let _ = redis_key;
        replicated(acknowledged, required)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.connection {
            Connection::Standalone(_) => "standalone",
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// Milliseconds for Redis: at least 1, since `PX 0` is an error, and at most a century.
fn millis(duration: Duration) -> u64 {
    let millis = duration.min(crate::lease::LONGEST).as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

/// The reply of the fenced script: 1 done, 0 the lease is no longer the caller's.
fn fenced_outcome(done: i64) -> Result<(), StoreError> {
    if done == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

/// The reply of `WAIT`, against the replicas required.
fn replicated(acknowledged: i64, required: u32) -> Result<(), StoreError> {
    if acknowledged >= i64::from(required) {
        Ok(())
    } else {
        Err(StoreError::NotReplicated {
            acknowledged: u32::try_from(acknowledged).unwrap_or(0),
            required,
        })
    }
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

impl Store for RedisStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let mut in_progress = [0; HEAD_LEN];
        in_progress[0] = VERSION;
        in_progress[1] = b'P';
        in_progress[2..34].copy_from_slice(fingerprint.as_bytes());
        in_progress[34..].copy_from_slice(&token.as_u128().to_be_bytes());
        let reply: Vec<Value> = BEGIN
            .key(self.redis_key(key))
            .arg(&fingerprint.as_bytes()[..])
            .arg(&in_progress[..])
            .arg(millis(lease))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(StoreError::unavailable)?;
        let mut reply = reply.into_iter();
        match (reply.next(), reply.next()) {
            (Some(Value::Int(0)), None) => Ok(Begin::Acquired(token)),
            (Some(Value::Int(1)), Some(Value::Int(pttl))) => Ok(Begin::InProgress {
                retry_after: Duration::from_millis(u64::try_from(pttl).unwrap_or(0)),
            }),
            (Some(Value::Int(2)), Some(Value::BulkString(record))) => {
                Ok(Begin::Completed(Bytes::from(record).slice(HEAD_LEN..)))
            }
            (Some(Value::Int(3)), None) => Ok(Begin::Mismatch),
            (Some(Value::Int(4)), None) => Err(corrupt(
                "the Redis record has an unknown version or is truncated",
            )),
            other => Err(corrupt(format!("unexpected reply to begin: {other:?}"))),
        }
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if let (Connection::Standalone(manager), Some(replicas)) = (&self.connection, self.replicas)
        {
            return self
                .complete_replicated(manager, replicas, key, token, &result, ttl)
                .await;
        }
        self.fenced(key, token, |invocation| {
            invocation.arg("complete").arg(&result[..]).arg(millis(ttl));
        })
        .await?;
        self.wait_for_replicas(&self.redis_key(key)).await
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        self.fenced(key, token, |invocation| {
            invocation.arg("release");
        })
        .await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(key, token, |invocation| {
            invocation.arg("extend").arg(millis(lease));
        })
        .await
    }
}

/// A standalone or a cluster connection, both cheap to clone and multiplexed.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(manager) => manager.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(manager) => manager.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(manager) => manager.get_db(),
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => cluster.get_db(),
        }
    }
}
