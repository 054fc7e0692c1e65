//! The welcome_email example, run as real processes: one e-mail, however many calls and
//! processes.

use std::process::{Command, Output};

use tests::processes::example;
use tests::redis_server::RedisServer;

fn run(outbox: &std::path::Path, redis: Option<&str>) -> Output {
    let mut command = Command::new(example("welcome_email"));
    command.env("OUTBOX", outbox).env("SEND_DELAY_MS", "300");
    match redis {
        Some(url) => command.env("REDIS_URL", url),
        None => command.env_remove("REDIS_URL"),
    };
    let output = command.output().expect("welcome_email runs");
    assert!(
        output.status.success(),
        "welcome_email failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn receipts(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sent(outbox: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(outbox)
        .expect("an outbox")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_calls_in_one_process_send_one_email() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.log");
    let output = run(&outbox, None);
    let receipts = receipts(&output);
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    assert!(receipts[0].starts_with("receipt rcpt_"));
    assert_eq!(receipts[0], receipts[1]);
    let sent = sent(&outbox);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].ends_with(receipts[0].trim_start_matches("receipt ")));
}

#[test]
fn three_processes_on_one_redis_send_one_email() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.log");
    let url = redis.url();
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| run(&outbox, Some(&url))))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let all: Vec<String> = outputs.iter().flat_map(receipts).collect();
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.iter().all(|receipt| *receipt == all[0]), "{all:?}");
    let sent = sent(&outbox);
    assert_eq!(sent.len(), 1, "one e-mail in total: {sent:?}");
}
