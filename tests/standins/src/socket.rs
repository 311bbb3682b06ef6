//! Slack's Socket Mode, on loopback: `apps.connections.open` (on the Slack stand-in) hands out
//! this server's `ws://` URL; each connection gets `hello`, then envelopes, and must acknowledge
//! each one with its `envelope_id` (and, where Slack accepts one, a response payload). The
//! stand-in records every acknowledgement, sends `disconnect` when asked, and can drop every
//! connection as a network failure would.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// One open connection: its outgoing frames, and a way to cut it.
struct Connection {
    frames: mpsc::UnboundedSender<Message>,
    cut: Arc<Notify>,
}

#[derive(Default)]
struct SocketState {
    /// Open connections, by number: where envelopes can be sent.
    connections: HashMap<u64, Connection>,
    opened: u64,
    next_envelope: u64,
    /// Envelope id → the acknowledgement's payload (`Null` for a bare ack).
    acks: HashMap<String, Value>,
}

/// The WebSocket side of the Slack stand-in's Socket Mode.
#[derive(Clone)]
pub struct SocketModeStandIn {
    pub url: String,
    state: Arc<Mutex<SocketState>>,
    changed: Arc<Notify>,
}

impl SocketModeStandIn {
    pub async fn start() -> std::io::Result<SocketModeStandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/link", listener.local_addr()?);
        let stand_in = SocketModeStandIn { url, state: Arc::default(), changed: Arc::new(Notify::new()) };
        let accepting = stand_in.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = accepting.clone();
                tokio::spawn(async move { connection.serve(stream).await });
            }
        });
        Ok(stand_in)
    }

    fn lock(&self) -> MutexGuard<'_, SocketState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        let Ok(socket) = tokio_tungstenite::accept_async(stream).await else { return };
        let (mut sink, mut source) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let cut = Arc::new(Notify::new());
        let number = {
            let mut s = self.lock();
            s.opened += 1;
            let number = s.opened;
            s.connections.insert(number, Connection { frames: tx.clone(), cut: cut.clone() });
            number
        };
        let hello = json!({ "type": "hello", "num_connections": number,
            "debug_info": { "host": "standin", "approximate_connection_time": 18060 },
            "connection_info": { "app_id": "A00000001" } });
        let _ = tx.send(Message::text(hello.to_string()));
        self.changed.notify_waiters();
        let writer = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let close = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || close {
                    break;
                }
            }
        });
        loop {
            let message = tokio::select! {
                message = source.next() => message,
                // Cut: both halves are dropped below, closing the TCP stream with no
                // WebSocket close frame, as a failing network or a killed proxy would.
                () = cut.notified() => break,
            };
            let Some(Ok(message)) = message else { break };
            match message {
                Message::Text(text) => {
                    let Ok(ack) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(id) = ack["envelope_id"].as_str() {
                        self.lock().acks.insert(id.to_string(), ack.get("payload").cloned().unwrap_or(Value::Null));
                        self.changed.notify_waiters();
                    }
                }
                Message::Ping(data) => {
                    let _ = tx.send(Message::Pong(data));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        self.lock().connections.remove(&number);
        writer.abort();
        self.changed.notify_waiters();
    }

    /// How many connections were opened so far (reconnections included).
    pub fn connections_opened(&self) -> u64 {
        self.lock().opened
    }

    /// How many are open now.
    pub fn connections_open(&self) -> usize {
        self.lock().connections.len()
    }

    /// Waits until `check` holds, or `deadline` passes.
    pub async fn wait_until(&self, deadline: Duration, check: impl Fn(&SocketModeStandIn) -> bool) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let changed = self.changed.notified();
            if check(self) {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return check(self);
            }
        }
    }

    /// Sends an envelope of `kind` (`slash_commands`, `interactive`, `events_api`) carrying
    /// `payload` over one open connection; returns its envelope id. `retry_attempt` above 0 is
    /// Slack sending it again.
    pub fn send(&self, kind: &str, payload: Value, retry_attempt: u32) -> Option<String> {
        let mut s = self.lock();
        s.next_envelope += 1;
        let id = format!("env-{:06}", s.next_envelope);
        let envelope = json!({ "envelope_id": id, "type": kind, "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt, "retry_reason": if retry_attempt > 0 { "timeout" } else { "" } });
        // Slack picks one of the open connections.
        let connection = s.connections.keys().max().copied()?;
        s.connections[&connection].frames.send(Message::text(envelope.to_string())).ok()?;
        Some(id)
    }

    /// The acknowledgement of `envelope_id`, once it came within `deadline`.
    pub async fn ack(&self, envelope_id: &str, deadline: Duration) -> Option<Value> {
        self.wait_until(deadline, |s| s.lock().acks.contains_key(envelope_id)).await;
        self.lock().acks.get(envelope_id).cloned()
    }

    /// Sends `disconnect` with `reason` (`refresh_requested`, `warning`) on every connection.
    pub fn disconnect(&self, reason: &str) {
        let message = json!({ "type": "disconnect", "reason": reason, "debug_info": { "host": "standin" } });
        for connection in self.lock().connections.values() {
            let _ = connection.frames.send(Message::text(message.to_string()));
        }
    }

    /// Drops every connection without a word (no close frame; the TCP stream just ends), as a
    /// network failure would.
    pub fn drop_connections(&self) {
        let dropped: Vec<_> = self.lock().connections.drain().collect();
        for (_, connection) in dropped {
            connection.cut.notify_one();
        }
        self.changed.notify_waiters();
    }
}
