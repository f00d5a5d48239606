//! Circle as operators run it: `circle serve` processes stopped by SIGTERM, killed
//! while leading, and cut off from a PostgreSQL that restarts under load.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use circle_projections::practice::Practice;
use circle_services::crypto::Vault;
use circle_services::projector;
use circle_services::store::Store;
use circle_tests::jetstream::{msg_ids, report_at, stream_messages, wait_for_messages};
use circle_tests::process::CircleProcess;
use circle_tests::{
    default_projection, fresh_data_dir, fresh_namespace, fresh_schema_url, nats_url,
};
use serde_json::{json, Value};
use uuid::Uuid;

/// What the writers did: the acknowledged writes, and every status by count.
type Written = (Vec<Ack>, BTreeMap<u16, usize>);

/// A write the service acknowledged: it must be in the log, exactly there.
#[derive(Clone, Debug)]
struct Ack {
    group_id: String,
    version: i64,
    position: i64,
}

struct Practiced {
    admin: String,
    master_key: String,
    http: reqwest::Client,
}

impl Practiced {
    fn new() -> Practiced {
        Practiced {
            admin: format!("admin-{}", Uuid::new_v4().simple()),
            master_key: Vault::generate_master_key(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        }
    }

    fn env<'a>(&'a self, database_url: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CIRCLE_DATABASE_URL", database_url),
            ("CIRCLE_ADMIN_TOKEN", self.admin.as_str()),
            ("CIRCLE_MASTER_KEY", self.master_key.as_str()),
        ]
    }

    async fn post(
        &self,
        base: &str,
        path: &str,
        body: Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
    }

    async fn create_group(&self, base: &str, group_id: &str) {
        let created = self
            .post(
                base,
                "/api/v1/groups",
                json!({"group_id": group_id, "name": "Load", "focus": "anxiety", "format": "open",
                       "capacity": 10, "facilitators": ["dr_a"]}),
            )
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    }

    /// Schedules session `n` of a group: one new event per request.
    async fn schedule(
        &self,
        base: &str,
        group_id: &str,
        n: usize,
    ) -> reqwest::Result<reqwest::Response> {
        let starts_at = chrono::DateTime::parse_from_rfc3339("2026-01-05T18:00:00+01:00").unwrap()
            + chrono::Duration::hours((n % 50_000) as i64);
        self.post(
            base,
            &format!("/api/v1/groups/{group_id}/sessions"),
            json!({"session_id": format!("s{n}"), "starts_at": starts_at, "duration_minutes": 60}),
        )
        .await
    }
}

/// Writers, one per group, scheduling sessions on whichever instance answers until
/// `stop`; every acknowledged write is returned. Refused connections (an instance
/// that is gone or stopping) move the writer to the next instance.
async fn load(
    practice: &Arc<Practiced>,
    bases: &[String],
    groups: &[String],
    stop: Arc<AtomicBool>,
) -> Written {
    let mut writers = Vec::new();
    for (w, group_id) in groups.iter().enumerate() {
        let (practice, bases, group_id, stop) = (
            practice.clone(),
            bases.to_vec(),
            group_id.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let (mut acks, mut statuses) = (Vec::new(), BTreeMap::new());
            let (mut n, mut target) = (0, w % bases.len());
            while !stop.load(Ordering::Relaxed) {
                match practice.schedule(&bases[target], &group_id, n).await {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        *statuses.entry(status).or_insert(0) += 1;
                        if answer.status().is_success() {
                            let body: Value = answer.json().await.unwrap();
                            acks.push(Ack {
                                group_id: group_id.clone(),
                                version: body["version"].as_i64().unwrap(),
                                position: body["position"].as_i64().unwrap(),
                            });
                            n += 1;
                        } else {
                            assert!(
                                answer.headers().contains_key("retry-after") || status < 500,
                                "a {status} without Retry-After"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(_) => {
                        target = (target + 1) % bases.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acks, statuses)
        }));
    }
    let (mut acks, mut statuses) = (Vec::new(), BTreeMap::new());
    for writer in writers {
        let (a, s) = writer.await.unwrap();
        acks.extend(a);
        for (status, count) in s {
            *statuses.entry(status).or_insert(0) += count;
        }
    }
    (acks, statuses)
}

/// [`load`] in the background: stop it by setting the flag, then await the writes.
fn start_load(
    practice: &Arc<Practiced>,
    bases: &[String],
    groups: &[String],
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Written>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (practice, bases, groups, flag) = (
        practice.clone(),
        bases.to_vec(),
        groups.to_vec(),
        stop.clone(),
    );
    let writing = tokio::spawn(async move { load(&practice, &bases, &groups, flag).await });
    (stop, writing)
}

/// Every acknowledged write is in the log at the position and version it was given.
async fn assert_all_in_log(store: &Store, acks: &[Ack]) {
    let mut by_group: BTreeMap<&str, Vec<&Ack>> = BTreeMap::new();
    for ack in acks {
        by_group.entry(&ack.group_id).or_default().push(ack);
    }
    for (group_id, acks) in by_group {
        let stream = store.load_stream("group", group_id, 0).await.unwrap();
        let at: BTreeMap<i64, i64> = stream.iter().map(|e| (e.sequence, e.position)).collect();
        for ack in acks {
            assert_eq!(
                at.get(&ack.version),
                Some(&ack.position),
                "acknowledged {ack:?} is in the log"
            );
        }
    }
}

async fn leader_of(http: &reqwest::Client, base: &str) -> Option<bool> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(text.lines().any(|l| l == "circle_leader 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_32_writers_loses_no_acknowledged_command_and_exits_cleanly() {
    let url = fresh_schema_url().await;
    let practice = Arc::new(Practiced::new());
    let mut circle = CircleProcess::serve(&practice.env(&url));
    circle.wait_ready(Duration::from_secs(20)).await;
    let groups: Vec<String> = (0..32).map(|g| format!("g{g}")).collect();
    for group_id in &groups {
        practice.create_group(&circle.base, group_id).await;
    }

    let (stop, writing) = start_load(&practice, std::slice::from_ref(&circle.base), &groups);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    circle.signal("TERM");
    let signalled = Instant::now();
    let status = circle.exit_status(Duration::from_secs(12)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (acks, statuses) = writing.await.unwrap();
    let log = circle.log_text();
    let status = status.unwrap_or_else(|| panic!("still running 12 s after SIGTERM; log:\n{log}"));
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        acks.len() > 100,
        "the load ran: {} writes, {statuses:?}",
        acks.len()
    );
    assert!(!statuses.contains_key(&500), "{statuses:?}");

    let store = Store::postgres(&url, 4).await.unwrap();
    assert_all_in_log(&store, &acks).await;
    // The projector's last step saw everything the appender drained, and saved it.
    let head = store.head_position().await.unwrap();
    let (position, text) = store
        .load_checkpoint(projector::REPORTS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(position, head, "final checkpoint at the head; log:\n{log}");
    let saved: Value = serde_json::from_str(&text).unwrap();
    let saved: Practice = serde_json::from_value(saved["state"].clone()).unwrap();
    let replayed = projector::rebuild(&store, &default_projection(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(saved, replayed, "reports equal a fresh replay");
    assert!(log.contains("stopped"), "{log}");
    // A clean stop is not a task lost: no worker may end before it is told to.
    for alarm in [
        "ended unexpectedly",
        "task failed",
        "task panicked",
        "did not stop in time",
        "stopping the process",
    ] {
        assert!(
            !log.contains(alarm),
            "{alarm:?} on a clean stop; log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_load_is_replaced_within_5s_and_nats_loses_and_doubles_nothing() {
    let url = fresh_schema_url().await;
    let ns = fresh_namespace();
    let config = fresh_data_dir().join("circle.toml");
    std::fs::write(&config, format!("nats_namespace = \"{ns}\"\n")).unwrap();
    let config = config.to_string_lossy().to_string();
    let nats = nats_url();
    let practice = Arc::new(Practiced::new());
    let mut env = practice.env(&url);
    env.extend([
        ("CIRCLE_CONFIG", config.as_str()),
        ("CIRCLE_NATS_URL", nats.as_str()),
    ]);
    let mut instances: Vec<CircleProcess> = (0..3).map(|_| CircleProcess::serve(&env)).collect();
    for instance in &instances {
        instance.wait_ready(Duration::from_secs(30)).await;
    }
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    let groups: Vec<String> = (0..8).map(|g| format!("g{g}")).collect();
    for group_id in &groups {
        practice.create_group(&bases[0], group_id).await;
    }
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.is_none() {
        assert!(Instant::now() < deadline, "no instance leads");
        for (i, base) in bases.iter().enumerate() {
            if leader_of(&practice.http, base).await == Some(true) {
                leader = Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.unwrap();

    let (stop, writing) = start_load(&practice, &bases, &groups);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    instances[leader].signal("KILL");
    let killed = Instant::now();
    let successor = loop {
        let mut found = None;
        for (i, base) in bases.iter().enumerate().filter(|(i, _)| *i != leader) {
            if leader_of(&practice.http, base).await == Some(true) {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no successor within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acks, statuses) = writing.await.unwrap();
    assert!(!statuses.contains_key(&500), "{statuses:?}");
    assert!(acks.iter().any(|a| a.position > 0), "{statuses:?}");

    let store = Store::postgres(&url, 4).await.unwrap();
    assert_all_in_log(&store, &acks).await;
    let head = store.head_position().await.unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let events_stream = format!("{}_EVENTS", ns.to_uppercase());
    wait_for_messages(&js, &events_stream, head as u64).await;
    let ids = msg_ids(&js, &events_stream).await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len() as i64, head, "every event on NATS");
    assert_eq!(distinct.len(), ids.len(), "no event twice");
    assert_eq!(stream_messages(&js, &events_stream).await as i64, head);
    // Each group's reports reached its last event.
    for group_id in &groups {
        let last = acks
            .iter()
            .filter(|a| &a.group_id == group_id)
            .map(|a| a.position)
            .max()
            .unwrap_or(0);
        report_at(
            &js,
            &format!("{}_REPORTS", ns.to_uppercase()),
            &format!("{ns}.reports.attendance.group.{group_id}"),
            last,
        )
        .await;
    }
    println!("takeover by instance {successor} after {takeover:?}");
    instances.clear();
}

/// A PostgreSQL cluster of the test's own on a free port, so the test can stop and
/// restart it while the shared server keeps running.
struct PrivatePostgres {
    port: u16,
    data: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let postgres = PrivatePostgres::init();
        postgres.start_server();
        postgres
    }

    fn init() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries (scripts/test installs postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let data = std::env::temp_dir().join(format!("circle-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data).unwrap();
        let postgres = PrivatePostgres {
            port: circle_tests::process::free_port(),
            data,
            bin,
        };
        postgres.chown();
        postgres.run("initdb", &["-A", "trust", "-U", "postgres", "-D"]);
        postgres
    }

    /// A cluster that accepts TLS connections only (`hostssl`), with a certificate for
    /// 127.0.0.1 signed by a throwaway authority whose certificate is returned.
    fn start_tls_only() -> (PrivatePostgres, std::path::PathBuf) {
        let postgres = PrivatePostgres::init();
        let authority = postgres.data.join("authority.crt");
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .current_dir(&postgres.data)
                .args(args)
                .output()
                .expect("openssl (a dependency of Debian's postgresql)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let new_p256_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=circle test authority",
                ][..],
                &new_p256_key,
                &["-keyout", "authority.key", "-out", "authority.crt"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &new_p256_key,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            postgres.data.join("san.ext"),
            "subjectAltName=IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "authority.crt",
            "-CAkey",
            "authority.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        std::fs::write(
            postgres.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        std::fs::write(
            postgres.data.join("postgresql.auto.conf"),
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        // The server refuses a key others can read.
        let key = postgres.data.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        postgres.chown();
        postgres.start_server();
        (postgres, authority)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
    fn as_server_user(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn chown(&self) {
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&self.data)
            .status();
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .as_server_user(program)
            .args(args)
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.display()
        );
        let output = self
            .as_server_user("pg_ctl")
            .args(["-w", "-l"])
            .arg(self.data.join("server.log"))
            .args(["-o", &options, "start", "-D"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn stop_server(&self) {
        let _ = self
            .as_server_user("pg_ctl")
            .args(["-w", "-m", "fast", "stop", "-D"])
            .arg(&self.data)
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_answers_503_naming_the_cause_and_recovers_within_5s() {
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let practice = Arc::new(Practiced::new());
    let circle = CircleProcess::serve(&practice.env(&url));
    circle.wait_ready(Duration::from_secs(20)).await;
    let groups: Vec<String> = (0..4).map(|g| format!("g{g}")).collect();
    for group_id in &groups {
        practice.create_group(&circle.base, group_id).await;
    }
    let (stop, writing) = start_load(&practice, std::slice::from_ref(&circle.base), &groups);
    tokio::time::sleep(Duration::from_millis(800)).await;
    postgres.stop_server();

    // While it is down: not ready, and quickly so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let ready = practice
        .http
        .get(format!("{}/readyz", circle.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // The store's ping has a 1 s deadline, well inside the pool's 5 s wait for a
    // connection; the rest is slack for a machine busy with the whole suite.
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "readyz took {:?}",
        asked.elapsed()
    );
    let refused = practice
        .schedule(&circle.base, "g0", 1_000_000)
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    postgres.start_server();
    let back = Instant::now();
    let mut n = 2_000_000;
    loop {
        n += 1;
        let answer = practice.schedule(&circle.base, "g0", n).await.unwrap();
        if answer.status().is_success() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still {} after 5 s",
            answer.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (acks, statuses) = writing.await.unwrap();
    assert!(!statuses.contains_key(&500), "never a 500: {statuses:?}");
    assert!(statuses.contains_key(&503), "{statuses:?}");
    let store = Store::postgres(&url, 4).await.unwrap();
    assert_all_in_log(&store, &acks).await;

    // The log line behind a 503 names the database error, not only "unavailable".
    let log = circle.log_text();
    let named = log.lines().any(|line| {
        line.contains("WARN")
            && line.contains("event store unavailable: ")
            && [
                "refused",
                "terminat",
                "closed",
                "reset",
                "timed out",
                "shutting down",
            ]
            .iter()
            .any(|cause| line.contains(cause))
    });
    assert!(named, "no 503 log line names the database error:\n{log}");
    println!("recovered {recovered:?} after PostgreSQL returned; {statuses:?}");
}

/// A write's status, whether it says when to retry, and its body; the version of an
/// acknowledged one goes to `acks`.
async fn answered(answer: reqwest::Response, acks: &mut Vec<i64>) -> (u16, bool, Value) {
    let status = answer.status().as_u16();
    let retry = answer.headers().contains_key("retry-after");
    let body: Value = answer.json().await.unwrap();
    if status < 300 {
        acks.push(body["version"].as_i64().unwrap());
    }
    (status, retry, body)
}

/// A small tmpfs: a disk that can really fill. Mounting needs root (CI runs as root);
/// elsewhere the test says it cannot run rather than pretend.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let path = fresh_data_dir();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { path })
    }

    /// Writes a file until the disk refuses more; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file
            .write_all(&block)
            .and_then(|_| file.sync_data())
            .is_ok()
        {}
        // Whatever a partial block left: fill it byte by byte.
        while file.write_all(&[0]).and_then(|_| file.sync_data()).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_embedded_store_refuses_writes_clearly_and_recovers_when_space_returns(
) {
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let practice = Arc::new(Practiced::new());
    let data_dir = disk.path.to_string_lossy().to_string();
    let circle = CircleProcess::serve(&[
        ("CIRCLE_DATA_DIR", data_dir.as_str()),
        ("CIRCLE_ADMIN_TOKEN", practice.admin.as_str()),
        ("CIRCLE_MASTER_KEY", practice.master_key.as_str()),
    ]);
    circle.wait_ready(Duration::from_secs(20)).await;
    practice.create_group(&circle.base, "g0").await;
    let mut acks = Vec::new();
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        let answer = practice.schedule(&circle.base, "g0", n).await.unwrap();
        let (status, _, body) = answered(answer, &mut acks).await;
        assert_eq!(status, 201, "{body}");
    }

    let filler = disk.fill();
    // SQLite may still have free pages; write until the disk shows, then 30 more.
    let mut refused = 0;
    let mut statuses = BTreeMap::new();
    for _ in 0..5_000 {
        n += 1;
        let answer = practice.schedule(&circle.base, "g0", n).await.unwrap();
        let (status, retry, body) = answered(answer, &mut acks).await;
        *statuses.entry(status).or_insert(0) += 1;
        if status >= 300 {
            assert_eq!(status, 503, "a full disk answers 503: {body}");
            assert!(retry, "a 503 carries Retry-After");
            assert!(
                body["detail"].as_str().unwrap_or("").contains("disk"),
                "the problem says the disk is full: {body}\n{}",
                circle.log_text()
            );
            refused += 1;
            if refused == 30 {
                break;
            }
        }
    }
    assert_eq!(refused, 30, "the disk never filled: {statuses:?}");
    let ready = practice
        .http
        .get(format!("{}/readyz", circle.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while writes fail");
    let log = circle.log_text();
    assert!(
        log.contains("database or disk is full"),
        "the log names SQLite's error:\n{log}"
    );

    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    loop {
        n += 1;
        let answer = practice.schedule(&circle.base, "g0", n).await.unwrap();
        let (status, _, body) = answered(answer, &mut acks).await;
        if status == 201 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still {status} 5 s after space returned: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..30 {
        n += 1;
        let answer = practice.schedule(&circle.base, "g0", n).await.unwrap();
        let (status, _, body) = answered(answer, &mut acks).await;
        assert_eq!(
            status, 201,
            "every write succeeds once space is back: {body}"
        );
    }
    circle.wait_ready(Duration::from_secs(5)).await;

    // Nothing half-written: the log holds exactly the acknowledged writes, in order.
    drop(circle);
    let store = Store::embedded(&disk.path).await.unwrap();
    let stream = store.load_stream("group", "g0", 0).await.unwrap();
    let versions: Vec<i64> = stream.iter().map(|e| e.sequence).collect();
    let expected: Vec<i64> = std::iter::once(1).chain(acks.iter().copied()).collect();
    assert_eq!(
        versions, expected,
        "the log is exactly what was acknowledged"
    );
    let positions: Vec<i64> = stream.iter().map(|e| e.position).collect();
    // After the admin token's event, the group's writes are the rest of the log.
    let head = store.head_position().await.unwrap();
    let first = head - positions.len() as i64 + 1;
    assert_eq!(positions, (first..=head).collect::<Vec<_>>());
}

impl Practiced {
    async fn get(&self, base: &str, path: &str) -> Value {
        let answer = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "GET {path}: {}",
            answer.status()
        );
        answer.json().await.unwrap()
    }

    /// Attendance alerts in a group once the reports have taken in `position`.
    async fn attendance_alerts(&self, base: &str, position: i64) -> usize {
        let alerts = self
            .get(
                base,
                &format!("/api/v1/alerts?group_id=g0&min_position={position}"),
            )
            .await;
        let alerts = alerts.as_array().expect("a list of alerts");
        alerts.iter().filter(|a| a["kind"] == "attendance").count()
    }
}

/// A checkpoint built under other alert rules is not trusted after a restart: the
/// reports are rebuilt from position 0 in the background, switched over when caught
/// up, and saved under the new rules, which the next start then trusts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_other_alert_rules_rebuilds_the_reports_and_switches_over() {
    let url = fresh_schema_url().await;
    let practice = Practiced::new();
    let first = CircleProcess::serve(&practice.env(&url));
    first.wait_ready(Duration::from_secs(20)).await;
    practice.create_group(&first.base, "g0").await;
    let mut position = 0;
    for client in ["c1", "c2"] {
        let registered = practice
            .post(
                &first.base,
                "/api/v1/clients",
                json!({"client_id": client, "display_name": "A. Member", "birth_year": 1990}),
            )
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
        let joined = practice
            .post(
                &first.base,
                "/api/v1/groups/g0/members",
                json!({"client_id": client, "joined_on": "2026-01-01"}),
            )
            .await
            .unwrap();
        assert_eq!(joined.status(), 200);
    }
    // c2 misses two sessions in a row: an alert under the default rules (2), not under 3.
    for n in 0..2 {
        assert_eq!(
            practice
                .schedule(&first.base, "g0", n)
                .await
                .unwrap()
                .status(),
            201
        );
        let marked = practice
            .post(
                &first.base,
                &format!("/api/v1/groups/g0/sessions/s{n}/attendance"),
                json!({"records": [{"client_id": "c1", "status": "present"},
                                   {"client_id": "c2", "status": "no_show"}]}),
            )
            .await
            .unwrap();
        assert_eq!(marked.status(), 200);
        let body: Value = marked.json().await.unwrap();
        position = body["position"].as_i64().unwrap();
    }
    assert_eq!(practice.attendance_alerts(&first.base, position).await, 1);
    let mut first = first;
    first.signal("TERM");
    assert!(first
        .exit_status(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));

    let config = fresh_data_dir().join("circle.toml");
    std::fs::write(&config, "alert_consecutive_absences = 3\n").unwrap();
    let config = config.to_string_lossy().to_string();
    let mut env = practice.env(&url);
    env.push(("CIRCLE_CONFIG", config.as_str()));
    let second = CircleProcess::serve(&env);
    second.wait_ready(Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while practice.attendance_alerts(&second.base, position).await != 0 {
        assert!(Instant::now() < deadline, "never switched to the new rules");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = second.log_text();
    assert!(
        log.contains("rebuilding the reports from position 0 in the background")
            && log.contains("settings"),
        "the log says why it rebuilds:\n{log}"
    );
    let mut second = second;
    second.signal("TERM");
    assert!(second
        .exit_status(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));

    // Saved under the new rules: the next start under them trusts the checkpoint.
    let third = CircleProcess::serve(&env);
    third.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(practice.attendance_alerts(&third.base, position).await, 0);
    let log = third.log_text();
    assert!(!log.contains("rebuilding the reports"), "{log}");
}

/// A database reached over the network needs TLS with the server's certificate
/// checked: `sslmode=verify-full` with the practice's own authority in `sslrootcert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circle_reaches_a_postgresql_that_accepts_only_tls_and_checks_its_certificate() {
    let (postgres, authority) = PrivatePostgres::start_tls_only();
    let name = format!("circle-{}", Uuid::new_v4().simple());
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}&application_name={name}",
        postgres.url(),
        authority.display()
    );
    let practice = Arc::new(Practiced::new());
    let circle = CircleProcess::serve(&practice.env(&url));
    circle.wait_ready(Duration::from_secs(20)).await;
    practice.create_group(&circle.base, "g0").await;

    let store = Store::postgres(&url, 1).await.unwrap();
    let Store::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL URL opens a PostgreSQL store")
    };
    let (connections, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert!(connections > 0, "circle holds no connection named {name}");
    assert_eq!(encrypted, connections, "every connection of circle is TLS");

    // A certificate Circle cannot trace to a root it was given is refused: without
    // `sslrootcert`, the throwaway authority is unknown, and the log says so.
    // (rustls: "invalid peer certificate: UnknownIssuer".)
    let untrusted = format!("{}?sslmode=verify-full", postgres.url());
    let refused = CircleProcess::serve(&practice.env(&untrusted));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !refused.log_text().contains("invalid peer certificate") {
        assert!(
            Instant::now() < deadline,
            "no log line names the certificate:\n{}",
            refused.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = practice
        .http
        .get(format!("{}/readyz", refused.base))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_ne!(ready.ok(), Some(200), "ready on an untrusted certificate");
}

/// A log written to a file or a pipe (systemd, a container runtime, a shipper) is
/// plain text: colour codes are for a terminal only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_carries_no_terminal_colour_codes() {
    let data_dir = fresh_data_dir().to_string_lossy().to_string();
    let circle = CircleProcess::serve(&[("CIRCLE_DATA_DIR", data_dir.as_str())]);
    circle.wait_ready(Duration::from_secs(20)).await;
    let log = circle.log_text();
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log:?}");
    assert!(log.contains(" INFO "), "{log}");
}
