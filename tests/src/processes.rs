//! The example programs, run as real processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The path of an example binary, built by `cargo test --workspace` (or
/// `cargo build -p examples --examples`) next to this test binary's directory.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run the whole suite (./scripts/test), or `cargo build -p examples \
         --examples` before this test",
        path.display()
    );
    path
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Running(pub Child);

impl Running {
    /// Starts `command` with its output discarded unless `TEST_EXAMPLE_OUTPUT` is set.
    pub fn spawn(command: &mut Command) -> Self {
        if std::env::var_os("TEST_EXAMPLE_OUTPUT").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Self(command.spawn().expect("the example starts"))
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.0.wait().is_ok_and(|status| status.success())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
