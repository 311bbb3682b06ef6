//! Stripe: the API client, webhook signature verification, and the objects refund-desk reads.

pub mod client;
pub mod events;
pub mod inbound;
pub mod types;
pub mod webhook;

pub use client::{CreateRefund, EventPage, Permission, StripeClient, StripeError};
pub use types::{Charge, Customer, EarlyFraudWarning, Event, PaymentIntent, Refund};
