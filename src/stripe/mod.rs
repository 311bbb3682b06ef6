//! Stripe: the API client, webhook signature verification, and the objects refund-desk reads.

pub mod client;
pub mod inbound;
pub mod types;
pub mod webhook;

pub use client::{CreateRefund, Permission, StripeClient, StripeError};
pub use types::{Charge, Customer, EarlyFraudWarning, Event, PaymentIntent, Refund};
