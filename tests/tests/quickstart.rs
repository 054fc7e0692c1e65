//! The quickstart server, run as real processes over real HTTP.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tests::net::post;
use tests::processes::{Running, example};
use tests::redis_server::RedisServer;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_quickstart(addr: SocketAddr, env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(example("quickstart"));
    command
        .env("PORT", addr.port().to_string())
        .env("PAYMENTS_DELAY_MS", "300");
    for (name, value) in env {
        command.env(name, value);
    }
    let running = Running::spawn(&mut command);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the quickstart never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

async fn payments(addr: SocketAddr) -> Vec<serde_json::Value> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::get("/payments")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    serde_json::from_slice(&body.to_bytes()).unwrap()
}

const PAYMENT: &str = r#"{"amount":1000,"currency":"EUR"}"#;

/// Retries `order-7` on `addr` until it is no longer in flight (at most 10 s): the replay.
async fn replay(addr: SocketAddr) -> tests::app::Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = post(addr, "/payments", "order-7", PAYMENT).await;
        if reply.status != StatusCode::CONFLICT {
            return reply;
        }
        assert!(Instant::now() < deadline, "order-7 never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_replays_on_its_memory_store_and_stops_on_sigterm() {
    let addr = free_addr();
    let server = start_quickstart(addr, &[]);
    let first = post(addr, "/payments", "order-1", PAYMENT).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = post(addr, "/payments", "order-1", PAYMENT).await;
    assert!(retry.replayed());
    assert_eq!(retry.json()["id"], first.json()["id"]);
    post(
        addr,
        "/payments",
        "order-1",
        r#"{"amount":2,"currency":"EUR"}"#,
    )
    .await
    .assert_problem(422, "key-reused");
    assert_eq!(payments(addr).await.len(), 1);
    assert!(
        server.terminate(),
        "the quickstart did not exit cleanly on SIGTERM"
    );
}

/// Two quickstart processes on one Redis behave as one service: the same key sent to both at
/// once executes one payment in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quickstarts_on_one_redis_are_one_service() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = (free_addr(), free_addr());
    let _first = start_quickstart(a, &[("REDIS_URL", &url)]);
    let _second = start_quickstart(b, &[("REDIS_URL", &url)]);
    let sends: Vec<_> = (0..10)
        .map(|n| {
            let addr = if n % 2 == 0 { a } else { b };
            tokio::spawn(async move { post(addr, "/payments", "order-7", PAYMENT).await })
        })
        .collect();
    for send in sends {
        let reply = send.await.unwrap();
        assert!(
            reply.status == StatusCode::CREATED || reply.status == StatusCode::CONFLICT,
            "{reply:?}"
        );
    }
    let (from_a, from_b) = (replay(a).await, replay(b).await);
    assert!(from_a.replayed() && from_b.replayed());
    assert_eq!(from_a.json()["id"], from_b.json()["id"]);
    let executed = payments(a).await.len() + payments(b).await.len();
    assert_eq!(executed, 1, "one payment executed across both processes");
}

/// With `REDIS_CLUSTER_NODES`, the quickstart keeps its records in the Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_on_a_redis_cluster() {
    let cluster = tests::redis_server::RedisCluster::start();
    let nodes = cluster.urls().join(",");
    let (a, b) = (free_addr(), free_addr());
    let _first = start_quickstart(a, &[("REDIS_CLUSTER_NODES", &nodes)]);
    let _second = start_quickstart(b, &[("REDIS_CLUSTER_NODES", &nodes)]);
    let created = post(a, "/payments", "order-9", PAYMENT).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let replayed = post(b, "/payments", "order-9", PAYMENT).await;
    assert!(replayed.replayed());
    assert_eq!(replayed.json()["id"], created.json()["id"]);
    let keys: usize = cluster
        .nodes
        .iter()
        .map(|node| {
            node.cmd(&["DBSIZE"])
                .trim_start_matches(':')
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(keys, 1, "one record in the cluster");
}
