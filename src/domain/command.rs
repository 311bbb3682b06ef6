//! The `/refund` grammar: what a person may type, parsed into a [`Command`].
//!
//! ```text
//! /refund                                   the request form
//! /refund help
//! /refund <ch_...|pi_...> [amount|full] [reason] [note ...]
//! /refund status <R-id> | list | cancel <R-id>
//! /refund delegate <@user> until YYYY-MM-DD | delegate off | delegate
//! ```
//!
//! The manifest sets `should_escape: true`, so Slack sends a typed `@someone` as
//! `<@U123|someone>`, and `&`, `<`, `>` in a note as `&amp;`, `&lt;`, `&gt;`.

use super::ids::{IdError, PaymentRef, RequestId, UserId};
use super::money::{AmountError, AmountInput};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most a note may hold; Slack cards have room for more, people's attention does not.
pub const MAX_NOTE_CHARS: usize = 500;

/// Why a refund is made. Maps to Stripe's three reasons where one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
    ServiceIssue,
    Goodwill,
    Other,
}

impl RefundReason {
    pub const ALL: [RefundReason; 6] = [
        RefundReason::Duplicate,
        RefundReason::Fraudulent,
        RefundReason::RequestedByCustomer,
        RefundReason::ServiceIssue,
        RefundReason::Goodwill,
        RefundReason::Other,
    ];

    /// Accepts the full names and the short forms `dup`, `fraud`, `customer`.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "duplicate" | "dup" => RefundReason::Duplicate,
            "fraudulent" | "fraud" => RefundReason::Fraudulent,
            "requested_by_customer" | "customer" => RefundReason::RequestedByCustomer,
            "service_issue" => RefundReason::ServiceIssue,
            "goodwill" => RefundReason::Goodwill,
            "other" => RefundReason::Other,
            _ => return None,
        })
    }

    /// The name used in commands and stored data.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefundReason::Duplicate => "duplicate",
            RefundReason::Fraudulent => "fraudulent",
            RefundReason::RequestedByCustomer => "requested_by_customer",
            RefundReason::ServiceIssue => "service_issue",
            RefundReason::Goodwill => "goodwill",
            RefundReason::Other => "other",
        }
    }

    /// Words for people.
    pub fn label(&self) -> &'static str {
        match self {
            RefundReason::Duplicate => "Duplicate charge",
            RefundReason::Fraudulent => "Fraudulent",
            RefundReason::RequestedByCustomer => "Requested by customer",
            RefundReason::ServiceIssue => "Service issue",
            RefundReason::Goodwill => "Goodwill",
            RefundReason::Other => "Other",
        }
    }

    /// The `reason` Stripe accepts on a refund, where one maps.
    pub fn stripe_reason(&self) -> Option<&'static str> {
        match self {
            RefundReason::Duplicate => Some("duplicate"),
            RefundReason::Fraudulent => Some("fraudulent"),
            RefundReason::RequestedByCustomer => Some("requested_by_customer"),
            _ => None,
        }
    }
}

impl fmt::Display for RefundReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How much was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountAsked {
    /// Everything still refundable on the charge.
    Full,
    Exact(AmountInput),
}

/// A note for the approvers, trimmed and bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note(String);

impl Note {
    pub fn parse(text: &str) -> Result<Option<Note>, CommandError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(None);
        }
        if t.chars().count() > MAX_NOTE_CHARS {
            return Err(CommandError::NoteTooLong);
        }
        Ok(Some(Note(t.to_string())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `/refund <ch_|pi_> [amount|full] [reason] [note ...]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCommand {
    pub target: PaymentRef,
    pub amount: AmountAsked,
    pub reason: RefundReason,
    pub note: Option<Note>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenForm,
    Help,
    Refund(RefundCommand),
    Status(RequestId),
    List,
    Cancel(RequestId),
    Delegate(DelegateCommand),
}

/// `/refund delegate ...`: hand one's approvals to someone until a day ends, end that, or show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegateCommand {
    Show,
    Off,
    To { delegate: UserId, until: chrono::NaiveDate },
}

/// What was wrong with a command; each message says how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}.")]
    Target(IdError),
    #[error("{0}")]
    Amount(AmountError),
    #[error("`{0}` is neither an amount nor a reason. After the charge, give an amount (or `full`), then a reason ({reasons}), then any note.", reasons = reason_list())]
    NotAmountOrReason(String),
    #[error("`{0}` is not a reason. Use one of {reasons}; the note comes after it.", reasons = reason_list())]
    UnknownReason(String),
    #[error("the note is longer than {MAX_NOTE_CHARS} characters; put the detail in the ticket and link it.")]
    NoteTooLong,
    #[error("`/refund {0}` needs a request id, like `/refund {0} R-1001`.")]
    MissingRequestId(&'static str),
    #[error("{0}.")]
    RequestId(IdError),
    #[error("`{0}` is not something /refund understands.")]
    Unknown(String),
    #[error("{DELEGATE_USAGE}")]
    Delegate,
    #[error("`{text}` is not a date; write the last day of the delegation like `2026-12-24`.")]
    DelegateDate {
        text: String,
        #[source]
        cause: chrono::ParseError,
    },
}

const DELEGATE_USAGE: &str = "To hand your approvals to someone, write `/refund delegate @someone until 2026-12-24` \
     (mention them with @, so Slack sends who they are); `/refund delegate off` ends it, and \
     `/refund delegate` shows it.";

fn reason_list() -> String {
    RefundReason::ALL.iter().map(|r| format!("`{}`", r.as_str())).collect::<Vec<_>>().join(", ")
}

/// Does this word look like an attempt at an amount (so a failure should be reported as one)?
fn looks_like_amount(word: &str) -> bool {
    word.chars().next().is_some_and(|c| c.is_ascii_digit() || "$€£¥₩₹-−.".contains(c)) || word.starts_with("US$")
}

/// Parses the text after `/refund`.
pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let text = text.trim();
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(Command::OpenForm);
    };
    let request_id = |verb: &'static str, arg: Option<&str>| -> Result<RequestId, CommandError> {
        let arg = arg.ok_or(CommandError::MissingRequestId(verb))?;
        RequestId::parse(arg).map_err(CommandError::RequestId)
    };
    match first.to_ascii_lowercase().as_str() {
        "help" | "-h" | "--help" | "?" => return Ok(Command::Help),
        "list" => return Ok(Command::List),
        "status" => return request_id("status", words.next()).map(Command::Status),
        "cancel" => return request_id("cancel", words.next()).map(Command::Cancel),
        "delegate" => return parse_delegate(&text[first.len()..]).map(Command::Delegate),
        _ => {}
    }
    if !(first.starts_with("ch_") || first.starts_with("pi_") || first.starts_with("py_")) {
        return Err(CommandError::Unknown(first.to_string()));
    }
    let target = PaymentRef::parse(first).map_err(CommandError::Target)?;

    // The rest, word by word, keeping the note's original spacing.
    let rest = text[first.len()..].trim_start();
    let (second, after_second) = split_word(rest);
    let (amount, rest) = match second {
        None => (AmountAsked::Full, ""),
        Some(w) if w.eq_ignore_ascii_case("full") => (AmountAsked::Full, after_second),
        Some(w) if RefundReason::parse(w).is_some() => (AmountAsked::Full, rest),
        Some(w) if looks_like_amount(w) => {
            (AmountAsked::Exact(AmountInput::parse(w).map_err(CommandError::Amount)?), after_second)
        }
        Some(w) => return Err(CommandError::NotAmountOrReason(w.to_string())),
    };
    let (third, after_third) = split_word(rest);
    let (reason, note_text) = match third {
        None => (RefundReason::RequestedByCustomer, ""),
        Some(w) => match RefundReason::parse(w) {
            Some(r) => (r, after_third),
            None => return Err(CommandError::UnknownReason(w.to_string())),
        },
    };
    let note = Note::parse(&unescape(note_text))?;
    Ok(Command::Refund(RefundCommand { target, amount, reason, note }))
}

/// `delegate`'s arguments: none, `off`, or `<@U...|name> until YYYY-MM-DD` (a name may hold
/// spaces, so the mention is read up to its `>`).
fn parse_delegate(rest: &str) -> Result<DelegateCommand, CommandError> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(DelegateCommand::Show);
    }
    if rest.eq_ignore_ascii_case("off") {
        return Ok(DelegateCommand::Off);
    }
    let end = rest.find('>').ok_or(CommandError::Delegate)?;
    let delegate = mentioned_user(&rest[..=end]).ok_or(CommandError::Delegate)?;
    match rest[end + 1..].split_whitespace().collect::<Vec<_>>()[..] {
        [until, day] if until.eq_ignore_ascii_case("until") => {
            let until = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map_err(|cause| CommandError::DelegateDate { text: day.to_string(), cause })?;
            Ok(DelegateCommand::To { delegate, until })
        }
        _ => Err(CommandError::Delegate),
    }
}

/// The user in an escaped mention, `<@U123|name>` or `<@U123>`.
fn mentioned_user(word: &str) -> Option<UserId> {
    let inner = word.strip_prefix("<@")?.strip_suffix('>')?;
    let id = inner.split('|').next()?;
    UserId::parse(id).ok()
}

/// Text as typed, from Slack's escaped form: links and mentions keep Slack's markup (they show
/// as links and mentions again), the three escaped characters come back.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

fn split_word(text: &str) -> (Option<&str>, &str) {
    let t = text.trim_start();
    if t.is_empty() {
        return (None, "");
    }
    match t.find(char::is_whitespace) {
        Some(i) => (Some(&t[..i]), t[i..].trim_start()),
        None => (Some(t), ""),
    }
}

/// The private usage text for `/refund help` and for anything malformed.
pub fn usage() -> String {
    format!(
        "*How to ask for a refund*\n\
         `/refund <charge or payment intent> [amount|full] [reason] [note]`\n\
         • `/refund ch_3Mtw... 25.00 duplicate customer charged twice`\n\
         • `/refund pi_3Mtw... full requested_by_customer`\n\
         • `/refund ch_3Mtw... ¥1200 service_issue` (the amount is in the charge's currency)\n\
         Amount: `25`, `25.50`, `$1,234.56`, or `full` (the default) for everything still refundable.\n\
         Reasons: {}; short forms `dup`, `fraud`, `customer`. Default: `requested_by_customer`.\n\
         Also: `/refund help`, `/refund status R-1001`, `/refund list`, `/refund cancel R-1001`.\n\
         Approvers away: `/refund delegate @someone until 2026-12-24` hands your approvals to them until that day ends; \
         `/refund delegate off` ends it, `/refund delegate` shows it.",
        reason_list()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegation_reads_an_escaped_mention_and_a_day() {
        let to = |text: &str| parse_command(text);
        assert_eq!(
            to("delegate <@U0123ABC|jane doe> until 2026-12-24"),
            Ok(Command::Delegate(DelegateCommand::To {
                delegate: UserId::parse("U0123ABC").unwrap(),
                until: chrono::NaiveDate::from_ymd_opt(2026, 12, 24).unwrap(),
            }))
        );
        assert_eq!(to("delegate OFF"), Ok(Command::Delegate(DelegateCommand::Off)));
        assert_eq!(to("delegate"), Ok(Command::Delegate(DelegateCommand::Show)));
        assert_eq!(to("delegate @jane until 2026-12-24"), Err(CommandError::Delegate), "an unescaped name says how");
        assert!(
            matches!(to("delegate <@U0123ABC> until 24/12"), Err(CommandError::DelegateDate { text, .. }) if text == "24/12")
        );
        assert_eq!(to("delegate <@U0123ABC>"), Err(CommandError::Delegate));
    }

    #[test]
    fn an_escaped_note_reads_as_typed() {
        let r = refund("ch_1 5 other refund &amp; credit &lt;2 days&gt;");
        assert_eq!(r.note.unwrap().as_str(), "refund & credit <2 days>");
    }

    fn refund(text: &str) -> RefundCommand {
        match parse_command(text) {
            Ok(Command::Refund(r)) => r,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn the_full_form_is_read_with_its_note() {
        let r = refund("ch_3MtwBw 25.00 duplicate customer  charged twice");
        assert_eq!(r.target.as_str(), "ch_3MtwBw");
        assert!(matches!(&r.amount, AmountAsked::Exact(a) if a.text() == "25.00"));
        assert_eq!(r.reason, RefundReason::Duplicate);
        assert_eq!(r.note.unwrap().as_str(), "customer  charged twice");
    }

    #[test]
    fn amount_and_reason_may_be_left_out() {
        let r = refund("pi_3MtwBw");
        assert_eq!(r.amount, AmountAsked::Full);
        assert_eq!(r.reason, RefundReason::RequestedByCustomer);
        assert!(r.note.is_none());
        let r = refund("ch_1 fraud");
        assert_eq!((r.amount, r.reason), (AmountAsked::Full, RefundReason::Fraudulent));
        let r = refund("ch_1 full dup");
        assert_eq!((r.amount, r.reason), (AmountAsked::Full, RefundReason::Duplicate));
        let r = refund("ch_1 $5 customer was upset");
        assert_eq!(r.reason, RefundReason::RequestedByCustomer);
        assert_eq!(r.note.unwrap().as_str(), "was upset");
    }

    #[test]
    fn other_verbs_are_recognised() {
        assert_eq!(parse_command(""), Ok(Command::OpenForm));
        assert_eq!(parse_command("  help "), Ok(Command::Help));
        assert_eq!(parse_command("list"), Ok(Command::List));
        assert_eq!(parse_command("status R-7"), Ok(Command::Status(RequestId::new(7))));
        assert_eq!(parse_command("cancel R-7"), Ok(Command::Cancel(RequestId::new(7))));
        assert_eq!(parse_command("status"), Err(CommandError::MissingRequestId("status")));
    }

    #[test]
    fn malformed_commands_say_what_was_wrong() {
        let cases = [
            ("refund ch_1", "not something"),
            ("ch_ 25", "charge id"),
            ("ch_1 -5", "negative"),
            ("ch_1 0", "more than zero"),
            ("ch_1 25 becauseIsaidso", "not a reason"),
            ("ch_1 please refund", "neither an amount nor a reason"),
            ("ch_1 12,34", "separators"),
            ("status R-x", "request id"),
        ];
        for (text, expected) in cases {
            let err = parse_command(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err:?}");
        }
        let long = format!("ch_1 5 other {}", "x".repeat(MAX_NOTE_CHARS + 1));
        assert_eq!(parse_command(&long), Err(CommandError::NoteTooLong));
    }

    #[test]
    fn only_three_reasons_reach_stripe() {
        let mapped: Vec<_> = RefundReason::ALL.iter().filter_map(|r| r.stripe_reason()).collect();
        assert_eq!(mapped, ["duplicate", "fraudulent", "requested_by_customer"]);
    }

    proptest::proptest! {
        #[test]
        fn no_command_text_makes_the_parser_panic(text in "\\PC{0,80}") {
            let _ = parse_command(&text);
        }

        #[test]
        fn refund_like_commands_never_panic(text in "(ch_|pi_)[a-zA-Z0-9]{0,8} [-$¥0-9,.full]{0,12} [a-z_]{0,12} .{0,20}") {
            let _ = parse_command(&text);
        }
    }
}
