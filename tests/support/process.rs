//! `circle` as operators run it: a process started from the built binary, stopped
//! with signals, its log kept in a file the test can read.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fresh_data_dir;

/// The `circle` binary beside the test executable (`scripts/test` builds it).
pub fn circle_binary() -> PathBuf {
    // tests run from target/<profile>/deps; the binary is in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("circle");
    assert!(
        binary.exists(),
        "{} missing: run scripts/test (it builds the binary)",
        binary.display()
    );
    binary
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub struct CircleProcess {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl CircleProcess {
    /// `circle serve` on a free port with these `CIRCLE_*` (or other) variables.
    pub fn serve(env: &[(&str, &str)]) -> CircleProcess {
        CircleProcess::start("serve", env)
    }

    /// `circle <subcommand>` (`serve`, or `demo` for a seeded practice) on a free port.
    pub fn start(subcommand: &str, env: &[(&str, &str)]) -> CircleProcess {
        let port = free_port();
        let log = fresh_data_dir().join("circle.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(circle_binary());
        command
            .arg(subcommand)
            .env("CIRCLE_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        CircleProcess {
            child: command.spawn().expect("start circle serve"),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            let ready = http
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "circle did not become ready; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -s {name}");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CircleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
