//! A local SMTP server for the tests: it speaks enough of RFC 5321 for a real client (lettre)
//! to deliver to it, keeps every message it accepted, and can be told to refuse mail or to
//! hold its answer to a message's data (so a test can kill the sender mid-delivery). A message
//! counts as delivered only once the server answered `250` to its data, as with any server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as received (dot-stuffing undone).
    pub data: String,
}

impl Mail {
    /// The value of header `name` (the first, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.data.split_once("\r\n\r\n")?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((key, rest)) = line.split_once(':') {
                if key.eq_ignore_ascii_case(name) {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }

    /// The subject, decoded when it was encoded (RFC 2047, UTF-8, B or Q).
    pub fn subject(&self) -> String {
        decode_words(&self.header("Subject").unwrap_or_default())
    }

    /// The body, quoted-printable undone where the message says so.
    pub fn body(&self) -> String {
        let (_, body) = self.data.split_once("\r\n\r\n").unwrap_or(("", ""));
        let qp = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
        if qp {
            decode_quoted_printable(body)
        } else if self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("base64"))
        {
            use base64::Engine;
            let joined: String = body.split_whitespace().collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(joined)
                    .unwrap_or_default(),
            )
            .into_owned()
        } else {
            body.to_owned()
        }
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') => i += 3,
            b'=' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_words(text: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    let mut previous_encoded = false;
    for word in text.split_whitespace() {
        let decoded = word
            .strip_prefix("=?")
            .and_then(|w| w.strip_suffix("?="))
            .and_then(|inner| {
                let mut parts = inner.splitn(3, '?');
                let (_charset, encoding, data) = (parts.next(), parts.next(), parts.next()?);
                match encoding?.to_ascii_uppercase().as_str() {
                    "B" => Some(
                        String::from_utf8_lossy(
                            &base64::engine::general_purpose::STANDARD
                                .decode(data)
                                .ok()?,
                        )
                        .into_owned(),
                    ),
                    "Q" => Some(decode_quoted_printable(&data.replace('_', " "))),
                    _ => None,
                }
            });
        // White space between two encoded words is not part of the text (RFC 2047 6.2).
        if !(out.is_empty() || previous_encoded && decoded.is_some()) {
            out.push(' ');
        }
        previous_encoded = decoded.is_some();
        out.push_str(decoded.as_deref().unwrap_or(word));
    }
    out
}

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts everything.
    Accept,
    /// Answers `451` (try again later) to every message.
    Refuse,
    /// Reads a message's data, then holds its answer until the mode changes (the message is
    /// delivered if the mode becomes `Accept`, dropped if the client goes away first).
    Hold,
}

/// The running server.
pub struct SmtpServer {
    pub address: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    mode: watch::Sender<Mode>,
    /// Messages whose data arrived while holding.
    held: Arc<Mutex<usize>>,
    /// Held messages whose client went away before the answer (not delivered).
    abandoned: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let address = listener.local_addr().expect("smtp address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(0));
        let abandoned = Arc::new(Mutex::new(0));
        let (mode, watching) = watch::channel(Mode::Accept);
        let task = tokio::spawn({
            let mails = mails.clone();
            let counts = (held.clone(), abandoned.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(session(
                        stream,
                        mails.clone(),
                        watching.clone(),
                        counts.clone(),
                    ));
                }
            }
        });
        Self {
            address,
            mails,
            mode,
            held,
            abandoned,
            task,
        }
    }

    /// The URL to give `CUSTOS_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.address)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Every message accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// The messages accepted so far for `address`.
    pub fn mails_to(&self, address: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// How many messages' data arrived while the server held its answers.
    pub fn held(&self) -> usize {
        *self.held.lock().unwrap()
    }

    /// How many held messages' clients went away before their answer (none delivered).
    pub fn abandoned(&self) -> usize {
        *self.abandoned.lock().unwrap()
    }

    /// Waits (up to `within`) until `check` holds over the accepted messages.
    pub async fn until(&self, within: Duration, check: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let mails = self.mails();
            if check(&mails) || std::time::Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn address_of(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument.rfind('>').unwrap_or(argument.len());
    argument[start..end.max(start)].to_owned()
}

async fn session(
    stream: TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
    mut mode: watch::Receiver<Mode>,
    (held, abandoned): (Arc<Mutex<usize>>, Arc<Mutex<usize>>),
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    macro_rules! reply {
        ($text:expr) => {
            if write.write_all($text.as_bytes()).await.is_err() {
                return;
            }
        };
    }
    reply!("220 localhost custos-test ESMTP\r\n");
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => reply!("250-localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"),
            "HELO" => reply!("250 localhost\r\n"),
            "MAIL" => {
                from = address_of(&command);
                to.clear();
                reply!("250 OK\r\n");
            }
            "RCPT" => {
                to.push(address_of(&command));
                reply!("250 OK\r\n");
            }
            "DATA" => {
                reply!("354 end with <CRLF>.<CRLF>\r\n");
                let mut data = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let text = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(text);
                }
                let current = *mode.borrow_and_update();
                let current = if current == Mode::Hold {
                    *held.lock().unwrap() += 1;
                    // Held until the mode changes; a client gone meanwhile (its connection
                    // closed) delivered nothing.
                    loop {
                        tokio::select! {
                            // A client that went away is noticed before a change of mode.
                            biased;
                            read = lines.fill_buf() => match read {
                                Ok([]) | Err(_) => {
                                    *abandoned.lock().unwrap() += 1;
                                    return;
                                }
                                // A client talking before its answer: it gets one first.
                                Ok(_) => break Mode::Accept,
                            },
                            changed = mode.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                let now = *mode.borrow_and_update();
                                if now != Mode::Hold {
                                    break now;
                                }
                            }
                        }
                    }
                } else {
                    current
                };
                if current == Mode::Refuse {
                    reply!("451 4.3.0 try again later\r\n");
                    continue;
                }
                if write.write_all(b"250 OK queued\r\n").await.is_err() {
                    return;
                }
                mails.lock().unwrap().push(Mail {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
            }
            "RSET" => {
                from.clear();
                to.clear();
                reply!("250 OK\r\n");
            }
            "NOOP" => reply!("250 OK\r\n"),
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => reply!("502 command not implemented\r\n"),
        }
    }
}
