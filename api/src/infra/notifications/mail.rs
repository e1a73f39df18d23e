//! The mail server notifications leave through (`CUSTOS_SMTP_URL`), over lettre's pooled
//! asynchronous SMTP transport: `smtp://host:port` (plain, for a relay on the same machine or
//! network), `smtp://…?tls=required` (STARTTLS) or `smtps://…` (TLS), with `user:password@`
//! when the server wants them.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// How long one message may take, from taking a connection to the server's answer, before it
/// counts as failed (lettre's own time-out covers connecting only).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);
/// Connections kept open to the mail server (as many as messages are sent at once).
pub(crate) const CONNECTIONS: u32 = 16;

/// One message to send.
pub(crate) struct Outgoing<'a> {
    /// The notification's id: the message's `Message-ID`, the same at every attempt.
    pub id: uuid::Uuid,
    pub to: &'a str,
    pub subject: &'a str,
    pub body: String,
}

/// Why a message did not leave.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MailError {
    /// The address cannot be written to (it is not an email address).
    #[error("not an email address")]
    BadAddress,
    /// The server refused it, did not answer in time, or could not be reached — said without
    /// the server's own words, which may quote the address.
    #[error("{0}")]
    Server(String),
}

/// A connection pool to the mail server, and who the messages are from.
#[derive(Clone)]
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold the server's password.
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    /// A mailer for `url`, sending from `from` (`Custos <notifications@example.org>`).
    pub(crate) fn new(url: &SecretString, from: &str) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| anyhow::anyhow!("CUSTOS_MAIL_FROM is not a mailbox: {e}"))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            // The error names the part of the URL at fault, never the password.
            .map_err(|e| anyhow::anyhow!("CUSTOS_SMTP_URL is not an SMTP URL: {e}"))?
            .timeout(Some(TIMEOUT))
            .pool_config(PoolConfig::new().max_size(CONNECTIONS))
            .build();
        Ok(Self { transport, from })
    }

    /// Sends one message; `Ok` once the server accepted it.
    pub(crate) async fn send(&self, outgoing: Outgoing<'_>) -> Result<(), MailError> {
        let to: Mailbox = outgoing.to.parse().map_err(|_| MailError::BadAddress)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(outgoing.subject)
            .message_id(Some(format!("<{}@custos>", outgoing.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(outgoing.body)
            .map_err(|e| MailError::Server(format!("the message could not be built: {e}")))?;
        match tokio::time::timeout(TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(MailError::Server(describe(&err))),
            Err(_) => Err(MailError::Server(format!(
                "the mail server did not answer within {} s",
                TIMEOUT.as_secs()
            ))),
        }
    }
}

/// What went wrong, by kind and reply code only: the server's text may quote the recipient.
fn describe(err: &lettre::transport::smtp::Error) -> String {
    match err.status() {
        Some(code) if err.is_permanent() => format!("the mail server refused it ({code})"),
        Some(code) => format!("the mail server asked to try again later ({code})"),
        None if err.is_timeout() => "the mail server did not answer in time".to_owned(),
        None if err.is_tls() => "TLS with the mail server failed".to_owned(),
        None if err.is_response() => "the mail server's answer was not understood".to_owned(),
        None => "the mail server could not be reached".to_owned(),
    }
}
