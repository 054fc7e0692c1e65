//! Throwaway Redis servers for tests: each on a free port of 127.0.0.1, in a temporary
//! directory, with persistence off; killed on drop, their log printed when the test failed.
//! Never the server on 6379 that a machine may already run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const INSTALL_HINT: &str = "redis-server was not found on PATH. The tests need a real Redis \
    (6.2 or later): install it (Debian/Ubuntu: `apt-get install redis-server redis-tools`), or \
    run ./scripts/test, which installs what is missing.";

/// One `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default test configuration.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`["--replicaof", "127.0.0.1 6380"]`).
    pub fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..10 {
            let port = free_port();
            let mut server = Self {
                port,
                child: None,
                args: args.clone(),
                dir: tempfile::Builder::new()
                    .prefix("idempotency-redis-")
                    .tempdir()
                    .expect("a temporary directory"),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process on `self.port`; false if it exited at once (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(error) => panic!("redis-server could not be started: {error}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!("redis-server exited with {status}; log:\n{}", self.log());
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} never answered; log:\n{}",
            self.port,
            self.log()
        );
    }

    fn ping(&self) -> bool {
        command(self.port, &["PING"]).is_ok_and(|reply| reply == "+PONG")
    }

    /// Kills the server (its data is gone: persistence is off).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a new one on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "the port was not free again");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the process (SIGSTOP): it accepts connections but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Runs one command and returns its raw RESP reply (first line, or the whole bulk string).
    pub fn cmd(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|error| panic!("{args:?} failed: {error}"))
    }

    /// Starts recording every command the server runs (`MONITOR`).
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw_quietly();
        }
        if std::thread::panicking() {
            eprintln!("--- redis-server :{} log ---\n{}", self.port, self.log());
        }
        self.stop();
    }
}

impl RedisServer {
    fn thaw_quietly(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Sends one command in RESP and reads a simple reply: a status, an error, an integer, or a
/// bulk string (returned as its content).
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else {
            return Ok(line); // $-1: nil
        };
        let mut body = vec![0; len + 2];
        reader.read_exact(&mut body)?;
        body.truncate(len);
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(line)
}

/// The commands a server ran, as `MONITOR` reports them.
#[derive(Debug)]
pub struct Monitor {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    marks: usize,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("a monitor connection");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR sent");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR answered");
        assert_eq!(ok.trim_end(), "+OK");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("monitor lines").push(line);
            }
        });
        Self {
            port,
            lines,
            marks: 0,
        }
    }

    /// The commands that clients sent (round trips) since the last call, commands run inside
    /// scripts excluded; the monitor's own markers excluded.
    pub fn round_trips(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("round-trip-mark-{}", self.marks);
        command(self.port, &["ECHO", &mark]).expect("ECHO answered");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut lines = self.lines.lock().expect("monitor lines");
                if let Some(at) = lines.iter().position(|l| l.contains(&mark)) {
                    let seen: Vec<String> = lines.drain(..=at).collect();
                    return seen[..seen.len() - 1]
                        .iter()
                        .filter(|l| !l.contains(" lua]") && !l.contains("round-trip-mark-"))
                        .cloned()
                        .collect();
                }
            }
            assert!(Instant::now() < deadline, "the monitor never saw {mark}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A Redis Cluster of three primaries, created with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// Its nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits until the cluster is ok.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|error| panic!("redis-cli could not run ({error}). {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|node| {
            command(node.port, &["CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
