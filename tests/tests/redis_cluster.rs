//! RedisStore on a real three-primary Redis Cluster: the store contract and the HTTP contract,
//! with records spread over every node.

use std::sync::Arc;
use std::time::Duration;

use idempotency_layer::key::{Fingerprint, Scope, StoreKey};
use idempotency_layer::store::{Begin, LeaseToken, RedisStore, Store};
use tests::redis_server::RedisCluster;

async fn cluster_store() -> (RedisStore, RedisCluster) {
    let cluster = RedisCluster::start();
    let store = RedisStore::open_cluster(cluster.urls())
        .await
        .expect("the cluster answers");
    (store, cluster)
}

tests::store_contract_suite!(cluster_store);
tests::http_contract_suite!(cluster_store);

/// Records land on every primary, and each is claimed, completed and replayed through the
/// node that owns its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_node() {
    let (store, cluster) = cluster_store().await;
    let minute = Duration::from_secs(60);
    for n in 0..60 {
        let key = StoreKey::derive(Arc::from("spread:"), "c", &Scope::global(), &[n]);
        let token = tests::store_contract::acquired(&store, &key, minute).await;
        store
            .complete(&key, token, bytes::Bytes::from(vec![n]), minute)
            .await
            .unwrap();
        assert_eq!(
            store
                .begin(&key, &Fingerprint::of(""), LeaseToken::random(), minute)
                .await
                .unwrap(),
            Begin::Completed(bytes::Bytes::from(vec![n]))
        );
    }
    for node in &cluster.nodes {
        let size: u64 = node
            .cmd(&["DBSIZE"])
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(size > 0, "node {} holds no record", node.port);
    }
}
