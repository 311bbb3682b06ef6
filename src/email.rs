//! Customer email over SMTP (lettre) and the messages' texts. It never decides when to send;
//! the worker does.

use crate::config::EmailSettings;
use crate::domain::{EmailKind, RefundRequest, capitalised};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("the address `{0}` is not a valid email address")]
    BadAddress(String),
    #[error("the mail server is unavailable: {0}")]
    Temporary(String),
    #[error("the mail server refused the message: {0}")]
    Permanent(String),
    #[error("the email could not be built: {0}")]
    Build(String),
}

/// `jenny@example.com` → `j***@example.com`, for the thread.
pub fn mask_address(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl Mailer {
    /// `smtp://host:port` (plain or `?tls=required` for STARTTLS), `smtps://` for implicit TLS,
    /// with `user:pass@` for AUTH: whatever lettre's URL form supports.
    pub fn new(settings: &EmailSettings) -> Result<Mailer, EmailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose_secret())
            // lettre's error may quote the URL, and the URL may hold the password.
            .map_err(|_| EmailError::Build("SMTP_URL is not a URL lettre can use (smtp://, smtps://)".into()))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Mailer { transport, from: settings.from.clone() })
    }

    /// The confirmation sent once Stripe says the refund succeeded.
    pub fn refund_succeeded(&self, r: &RefundRequest, to: &str, message_id: &str) -> Result<Message, EmailError> {
        let to: Mailbox = to.parse().map_err(|_| EmailError::BadAddress(to.to_string()))?;
        let amount = r.amount.map(|m| m.to_string()).unwrap_or_default();
        let refund_id = r.refund.as_ref().map(|f| f.id.to_string()).unwrap_or_default();
        let card = r
            .charge
            .as_ref()
            .and_then(|c| c.card.as_ref())
            .map(|c| format!(" to your {} card ending in {}", capitalised(&c.brand), c.last4))
            .unwrap_or_default();
        let paid_on = r
            .charge
            .as_ref()
            .map(|c| format!(" for your payment of {} on {}", c.amount, c.created.format("%-d %B %Y")))
            .unwrap_or_default();
        let body = format!(
            "Hello,\n\n\
             We have refunded {amount}{card}{paid_on}.\n\n\
             Refund reference: {refund_id}\n\
             Depending on your bank, the money reaches your account within 5 to 10 business days.\n\n\
             If you have any questions, reply to this email.\n"
        );
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("Your refund of {amount} is on its way"))
            .message_id(Some(message_id.to_string()))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| EmailError::Build(e.to_string()))
    }

    /// A stable Message-ID per request and kind, so a resend is recognisable as the same email.
    pub fn message_id(&self, r: &RefundRequest, kind: EmailKind, install_id: &str) -> String {
        let domain = self.from.email.domain().to_string();
        format!("<{}.{}.{install_id}@{domain}>", r.id, kind.as_str())
    }

    #[tracing::instrument(skip_all)]
    pub async fn send(&self, message: Message) -> Result<(), EmailError> {
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(EmailError::Permanent(e.to_string())),
            Err(e) => Err(EmailError::Temporary(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked_for_the_thread() {
        assert_eq!(mask_address("jenny@example.com"), "j***@example.com");
        assert_eq!(mask_address("nonsense"), "***");
    }
}
