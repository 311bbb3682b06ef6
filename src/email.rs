//! Customer email over SMTP (lettre): messages rendered from templates (minijinja), each with a
//! plain-text and an HTML part. It never decides when to send; the worker does.

use crate::config::EmailSettings;
use crate::domain::{EmailKind, RefundRequest, capitalised};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::{Environment, Value, context};
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

/// What the company says about itself in every email, from the `[email]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailTexts {
    pub company_name: String,
    pub reply_to: Option<Mailbox>,
    /// May span lines.
    pub signature: String,
}

impl EmailTexts {
    /// Defaults that read well, from the sender's display name.
    pub fn defaults(from: &Mailbox) -> EmailTexts {
        let company =
            from.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| from.email.domain().to_string());
        EmailTexts { signature: format!("The {company} team"), company_name: company, reply_to: None }
    }
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

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The built-in templates, by kind: (text, html).
fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    // Names ending in .html are escaped for HTML; the text parts are not.
    for (name, source) in [
        ("refund_succeeded.txt", include_str!("../templates/email/refund_succeeded.txt")),
        ("refund_succeeded.html", include_str!("../templates/email/refund_succeeded.html")),
        ("request_denied.txt", include_str!("../templates/email/request_denied.txt")),
        ("request_denied.html", include_str!("../templates/email/request_denied.html")),
        ("refund_failed.txt", include_str!("../templates/email/refund_failed.txt")),
        ("refund_failed.html", include_str!("../templates/email/refund_failed.html")),
    ] {
        env.add_template(name, source).expect("the built-in templates parse");
    }
    env
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    texts: EmailTexts,
    templates: Environment<'static>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl Mailer {
    /// `smtp://host:port` (plain, or `?tls=required` for STARTTLS), `smtps://` for implicit TLS,
    /// with `user:pass@` for AUTH: whatever lettre's URL form supports.
    pub fn new(settings: &EmailSettings) -> Result<Mailer, EmailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose_secret())
            // lettre's error may quote the URL, and the URL may hold the password.
            .map_err(|_| EmailError::Build("SMTP_URL is not a URL lettre can use (smtp://, smtps://)".into()))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Mailer { transport, from: settings.from.clone(), texts: settings.texts.clone(), templates: templates() })
    }

    /// The email of `kind` for request `r`, in the customer's currency.
    pub fn render(&self, kind: EmailKind, r: &RefundRequest) -> Result<Rendered, EmailError> {
        let amount = r.amount.map(|m| m.to_string()).unwrap_or_else(|| r.asked_text());
        let charge = r.charge.as_ref();
        let card = charge
            .and_then(|c| c.card.as_ref())
            .map(|c| format!("{} card ending in {}", capitalised(&c.brand), c.last4));
        let signature_html = self
            .texts
            .signature
            .lines()
            .map(|l| l.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))
            .collect::<Vec<_>>()
            .join("<br>");
        let ctx = context! {
            amount => amount.clone(),
            card => card,
            name => charge.and_then(|c| c.customer_name.clone()),
            paid => charge.map(|c| c.amount.to_string()),
            paid_on => charge.map(|c| c.created.format("%-d %B %Y").to_string()),
            refund_id => r.refund.as_ref().map(|f| f.id.to_string()),
            reason => r.deny_reason.clone(),
            company => self.texts.company_name.clone(),
            signature => self.texts.signature.clone(),
        };
        let (name, subject) = match kind {
            EmailKind::RefundSucceeded => ("refund_succeeded", format!("Your refund of {amount} is on its way")),
            EmailKind::RequestDenied => ("request_denied", format!("About your refund request for {amount}")),
            EmailKind::RefundFailed => ("refund_failed", format!("We could not complete your refund of {amount}")),
        };
        let render = |file: String, ctx: Value| -> Result<String, EmailError> {
            let template = self.templates.get_template(&file).map_err(|e| EmailError::Build(e.to_string()))?;
            template.render(ctx).map_err(|e| EmailError::Build(e.to_string()))
        };
        let text = render(format!("{name}.txt"), ctx.clone())?;
        // The signature's line breaks become <br>, its text escaped above.
        let html_ctx = context! { signature => Value::from_safe_string(signature_html), ..ctx };
        let html = render(format!("{name}.html"), html_ctx)?;
        Ok(Rendered { subject, text, html })
    }

    /// The message of `kind` for `r`, to `to`.
    pub fn message(
        &self,
        kind: EmailKind,
        r: &RefundRequest,
        to: &str,
        message_id: &str,
    ) -> Result<Message, EmailError> {
        let to: Mailbox = to.parse().map_err(|_| EmailError::BadAddress(to.to_string()))?;
        let rendered = self.render(kind, r)?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(message_id.to_string()));
        if let Some(reply_to) = &self.texts.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(rendered.text, rendered.html))
            .map_err(|e| EmailError::Build(e.to_string()))
    }

    /// A stable Message-ID per request and kind, so a resend is recognisable as the same email.
    pub fn message_id(&self, r: &RefundRequest, kind: EmailKind, install_id: &str) -> String {
        let domain = self.from.email.domain().to_string();
        format!("<{}.{}.{install_id}@{domain}>", r.id, kind.as_str())
    }

    /// Whether the mail server answers (and accepts the credentials).
    pub async fn check(&self) -> Result<(), EmailError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(EmailError::Temporary("the server did not answer".into())),
            Err(e) => Err(EmailError::Temporary(e.to_string())),
        }
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

    #[test]
    fn defaults_come_from_the_sender() {
        let t = EmailTexts::defaults(&"Acme Billing <billing@acme.example>".parse().unwrap());
        assert_eq!(t.company_name, "Acme Billing");
        assert_eq!(t.signature, "The Acme Billing team");
        let t = EmailTexts::defaults(&"billing@acme.example".parse().unwrap());
        assert_eq!(t.company_name, "acme.example");
    }
}
