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
        header_in(self.data.split("\r\n\r\n").next()?, name).map(|v| decode_encoded_words(&v))
    }

    /// Every text part, decoded, as (content type, text); a single-part message gives one.
    pub fn parts(&self) -> Vec<(String, String)> {
        parts_of(&self.data)
    }

    /// The plain-text part (or the whole body of a single-part message).
    pub fn body(&self) -> String {
        let parts = self.parts();
        parts
            .iter()
            .find(|(ct, _)| ct.starts_with("text/plain"))
            .or(parts.first())
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }

    /// The HTML part, if any.
    pub fn html(&self) -> Option<String> {
        self.parts().into_iter().find(|(ct, _)| ct.starts_with("text/html")).map(|(_, t)| t)
    }
}

fn header_in(head: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with(' ') || line.starts_with('\t') {
                v.push(' ');
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

/// Splits a MIME entity into its text parts, decoding each.
fn parts_of(entity: &str) -> Vec<(String, String)> {
    let (head, body) = entity.split_once("\r\n\r\n").unwrap_or((entity, ""));
    let content_type = header_in(head, "Content-Type").unwrap_or_else(|| "text/plain".into());
    if content_type.to_ascii_lowercase().starts_with("multipart/") {
        let Some(boundary) = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_string())
        else {
            return vec![];
        };
        let delimiter = format!("--{boundary}");
        return body
            .split(&delimiter)
            .skip(1)
            .take_while(|p| !p.starts_with("--"))
            .flat_map(|p| parts_of(p.trim_start_matches("\r\n")))
            .collect();
    }
    let encoding = header_in(head, "Content-Transfer-Encoding").unwrap_or_default().to_ascii_lowercase();
    let text = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            use base64::Engine;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(compact).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => body.to_string(),
    };
    vec![(content_type.to_ascii_lowercase(), text)]
}

/// RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`), as a mail client shows them.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let Some(end) = rest[start + 2..].find("?=").map(|e| start + 2 + e) else { break };
        let word = &rest[start + 2..end];
        let mut pieces = word.splitn(3, '?');
        let (_charset, encoding, text) =
            (pieces.next(), pieces.next().unwrap_or_default(), pieces.next().unwrap_or_default());
        let decoded = match encoding.to_ascii_lowercase().as_str() {
            "b" => b64(text),
            "q" => decode_quoted_printable(&text.replace('_', " ")),
            _ => rest[start..end + 2].to_string(),
        };
        let before = &rest[..start];
        // White space between two encoded words is not part of the text.
        if out.is_empty() || !before.trim().is_empty() {
            out.push_str(before);
        }
        out.push_str(&decoded);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
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
    /// When set, AUTH with these (user, password) is required before MAIL.
    credentials: Option<(String, String)>,
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
        SmtpSink::start_inner(None).await
    }

    /// A sink that requires `AUTH PLAIN` or `AUTH LOGIN` with these credentials, as mail
    /// servers that relay for you do.
    pub async fn start_with_auth(user: &str, password: &str) -> std::io::Result<SmtpSink> {
        SmtpSink::start_inner(Some((user.to_string(), password.to_string()))).await
    }

    async fn start_inner(credentials: Option<(String, String)>) -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<SinkState>> = Arc::new(Mutex::new(SinkState { credentials, ..SinkState::default() }));
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, accept_state.clone()));
            }
        });
        Ok(SmtpSink { addr, state })
    }

    /// `smtp://127.0.0.1:port` (with `user:password@` when it requires AUTH), for `SMTP_URL`.
    pub fn url(&self) -> String {
        match &self.lock().credentials {
            Some((user, password)) => format!("smtp://{user}:{password}@{}", self.addr),
            None => format!("smtp://{}", self.addr),
        }
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

fn b64(text: &str) -> String {
    use base64::Engine;
    String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or_default())
        .into_owned()
}

/// Reads `AUTH PLAIN <b64>` or the `AUTH LOGIN` dialogue; returns (user, password).
async fn read_auth(
    command: &str,
    lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<Option<(String, String)>> {
    let mut words = command.split_whitespace().skip(1);
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let mut ask = async |prompt: &[u8]| -> std::io::Result<String> {
        write.write_all(prompt).await?;
        let mut answer = String::new();
        lines.read_line(&mut answer).await?;
        Ok(answer)
    };
    Ok(match mechanism.as_str() {
        "PLAIN" => {
            let token = match words.next() {
                Some(t) => t.to_string(),
                None => ask(b"334 \r\n").await?,
            };
            let decoded = b64(&token);
            let mut fields = decoded.split('\0').skip(1);
            Some((fields.next().unwrap_or_default().to_string(), fields.next().unwrap_or_default().to_string()))
        }
        "LOGIN" => {
            let user = match words.next() {
                Some(t) => b64(t),
                None => b64(&ask(b"334 VXNlcm5hbWU6\r\n").await?),
            };
            let password = b64(&ask(b"334 UGFzc3dvcmQ6\r\n").await?);
            Some((user, password))
        }
        _ => None,
    })
}

async fn serve(stream: TcpStream, state: Arc<Mutex<SinkState>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.localhost ESMTP refund-desk stand-in\r\n").await?;
    let mut from = String::new();
    let mut to = vec![];
    let mut line = String::new();
    let credentials = state.lock().unwrap_or_else(|p| p.into_inner()).credentials.clone();
    let mut authenticated = credentials.is_none();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" if credentials.is_some() => {
                "250-sink.localhost\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10485760".into()
            }
            "EHLO" => "250-sink.localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760".into(),
            "AUTH" => {
                let given = read_auth(&command, &mut lines, &mut write).await?;
                if given.is_some() && given == credentials {
                    authenticated = true;
                    "235 2.7.0 Authentication successful".into()
                } else {
                    "535 5.7.8 Authentication credentials invalid".into()
                }
            }
            "MAIL" if !authenticated => "530 5.7.0 Authentication required".into(),
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
