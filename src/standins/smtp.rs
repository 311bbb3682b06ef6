//! An SMTP sink on loopback: speaks enough SMTP (RFC 5321) for a real client to deliver to
//! it, and keeps every message it accepts. It can be told to answer the next `DATA` with a
//! temporary (4xx) or permanent (5xx) refusal.

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, with CRLF line ends.
    pub data: String,
}

impl Received {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with(' ') || line.starts_with('\t') {
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_string());
            }
        }
        value
    }

    /// The body, decoded from quoted-printable when so encoded.
    pub fn body(&self) -> String {
        let body = self.data.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let qp = self.header("Content-Transfer-Encoding").is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
        if qp { decode_quoted_printable(body) } else { body.to_string() }
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let mut bytes = vec![];
    let raw = text.replace("=\r\n", "");
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && let Some(Ok(v)) = raw.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            bytes.push(v);
            i += 3;
            continue;
        }
        bytes.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Default)]
struct SinkState {
    messages: Vec<Received>,
    /// Replies to give the next `DATA` commands instead of accepting.
    data_refusals: Vec<String>,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<SinkState>>,
}

impl SmtpSink {
    pub async fn start() -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<SinkState>> = Arc::default();
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, accept_state.clone()));
            }
        });
        Ok(SmtpSink { addr, state })
    }

    /// `smtp://127.0.0.1:port`, for `SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }

    /// The next message is refused with `reply` (e.g. `451 4.3.0 try later`).
    pub fn refuse_next(&self, reply: &str) {
        self.lock().data_refusals.push(reply.to_string());
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<SinkState>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.localhost ESMTP refund-desk stand-in\r\n").await?;
    let mut from = String::new();
    let mut to = vec![];
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => "250-sink.localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760".into(),
            "HELO" => "250 sink.localhost".into(),
            "MAIL" => {
                from = command
                    .split_once(':')
                    .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_string())
                    .unwrap_or_default();
                to.clear();
                "250 2.1.0 OK".into()
            }
            "RCPT" => {
                let addr = command
                    .split_once(':')
                    .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_string())
                    .unwrap_or_default();
                if addr.contains('@') {
                    to.push(addr);
                    "250 2.1.5 OK".into()
                } else {
                    "501 5.1.3 Bad recipient address syntax".into()
                }
            }
            "DATA" => {
                if to.is_empty() {
                    "503 5.5.1 RCPT first".into()
                } else {
                    write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                    let mut data = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                        data.push_str(unstuffed);
                    }
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if s.data_refusals.is_empty() {
                        s.messages.push(Received { mail_from: from.clone(), rcpt_to: to.clone(), data });
                        format!("250 2.0.0 OK queued as {}", s.messages.len())
                    } else {
                        s.data_refusals.remove(0)
                    }
                }
            }
            "RSET" => {
                from.clear();
                to.clear();
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not recognized".into(),
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
