//! A `circle serve` process for the benchmarks that measure one (memory, exports).

/// A process's resident and peak resident memory, in kB, from /proc.
pub fn resident_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A `circle serve` child process on a free port, killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `circle serve` on `url` with `admin` as its admin token.
pub fn serve(url: &str, admin: &str) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_circle"))
        .arg("serve")
        .env("CIRCLE_DATABASE_URL", url)
        .env("CIRCLE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CIRCLE_ADMIN_TOKEN", admin)
        .env(
            "CIRCLE_MASTER_KEY",
            circle_services::crypto::Vault::generate_master_key(),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start circle serve");
    Serve {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}
