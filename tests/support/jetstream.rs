//! JetStream helpers for tests: a private nats-server that a test can stop and
//! start, and readers of what Circle published.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::Value;

use crate::fresh_data_dir;

/// The newest message on `subject` whose `Circle-Position` has reached `position`.
pub async fn report_at(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    position: i64,
) -> Value {
    let message = report_message_at(js, stream, subject, position).await;
    serde_json::from_slice(&message.payload).unwrap()
}

/// [`report_at`] with the message's headers.
pub async fn report_message_at(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    position: i64,
) -> async_nats::jetstream::message::StreamMessage {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(stream) = js.get_stream(stream).await {
            if let Ok(message) = stream.get_last_raw_message_by_subject(subject).await {
                let at: i64 = message
                    .headers
                    .get("Circle-Position")
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                let id = message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_string());
                assert_eq!(id, Some(format!("{subject}@{at}")));
                if at >= position {
                    return message;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no report on {subject} reached position {position}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

pub async fn wait_for_messages(js: &jetstream::Context, stream: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream_messages(js, stream).await < count {
        assert!(
            Instant::now() < deadline,
            "{stream} holds {} of {count}",
            stream_messages(js, stream).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private nats-server on a free port, so the test can stop and restart it.
pub struct PrivateNats {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let mut nats = PrivateNats::not_started();
        nats.restart();
        nats
    }

    /// A free port and a store directory, with no server yet: NATS "down at start".
    pub fn not_started() -> PrivateNats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PrivateNats {
            port,
            store: fresh_data_dir(),
            child: None,
        }
    }

    /// A JetStream context on this server, connecting whenever it is up.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("a NATS client");
        jetstream::new(client)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let binary = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

pub async fn msg_ids(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            // Unacknowledged, a pull stalls at max_ack_pending (1,000) messages.
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let total = stream_messages(js, stream.cached_info().config.name.as_str()).await as usize;
    let mut messages = consumer
        .fetch()
        .max_messages(total)
        .messages()
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        ids.push(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .unwrap()
                .to_string(),
        );
    }
    ids
}
