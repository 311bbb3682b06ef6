//! The use cases: what a person or Stripe does with the desk, each in a file of its own. This
//! is the only layer that combines the store, the clients and the domain's rules for them.
//!
//! - [`ask`]: someone asks for a refund (a slash command or the form);
//! - [`decide`]: an approver approves or denies;
//! - [`stripe_news`]: Stripe tells the desk about a refund (a webhook or its events list).
//!
//! Inbound adapters (`slack::inbound`, `slack::socket`, `stripe::inbound`, `stripe::events`)
//! verify, parse, call one of these and turn the outcome into their transport's answer. What
//! happens after (checking the payment at Stripe, the refund itself, the card, the emails) is
//! jobs, in `worker::handlers`.

pub mod ask;
pub mod backup;
pub mod decide;
pub mod delegate;
pub mod digest;
pub mod stripe_news;
