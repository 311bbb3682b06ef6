//! Stripe's rate limit: the stand-in enforces it as Stripe does, and the desk's pace stays under it.

use crate::helpers::{HEAVY, TestApp};
use refund_desk_standins::{ChargeSpec, FakeStripe, driver};

#[tokio::test]
async fn the_stripe_stand_in_refuses_calls_past_twenty_five_a_second_as_stripe_does_in_test_mode() {
    let _heavy = HEAVY.lock().await;
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let (charge, _) = stripe.add_charge(ChargeSpec::default());
    let http = reqwest::Client::new();
    let mut statuses = vec![];
    for _ in 0..30 {
        let answer = http
            .get(format!("{}/v1/charges/{charge}", stripe.url))
            .bearer_auth(driver::STRIPE_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    // Thirty calls on loopback take well under the second the limit counts over (the lock keeps
    // the load tests off the machine meanwhile), so the last five are refused.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count() as u64 + stripe.rate_limited(), 30);
    assert_eq!(statuses[..25], [200; 25], "the first 25 of a second go through");
    assert_eq!(statuses[25..], [429; 5], "the rest of that second is refused");
}

#[tokio::test]
async fn a_burst_of_requests_at_the_default_pace_gets_every_card_without_a_single_429() {
    let _heavy = HEAVY.lock().await;
    let app = TestApp::spawn().await;
    let commands: Vec<String> =
        (0..30).map(|_| format!("{} 5.00 duplicate", app.add_charge(ChargeSpec::default()))).collect();
    let ids = futures::future::join_all(commands.iter().map(|c| app.request_refund(c))).await;
    for id in ids {
        app.card(id).await;
    }
    assert_eq!(app.stripe.rate_limited(), 0, "the desk went over Stripe's rate limit");
}

/// The Stripe reads made while checking requests, as `METHOD path`.
fn reads(app: &TestApp) -> Vec<String> {
    app.stripe.received().iter().filter(|r| r.method == "GET").map(|r| format!("GET {}", r.path)).collect()
}

#[tokio::test]
async fn a_payment_intent_is_read_with_its_charge_in_one_call() {
    let app = TestApp::spawn().await;
    let (charge, pi) = app.stripe.add_charge(ChargeSpec { with_payment_intent: true, ..ChargeSpec::default() });
    let pi = pi.unwrap();
    let id = app.request_refund(&format!("{pi} 5.00 duplicate")).await;
    let card = app.card(id).await;
    assert!(card.blocks.to_string().contains("4242"), "the charge's card is on the card: {}", card.blocks);
    assert_eq!(
        reads(&app),
        [format!("GET /v1/payment_intents/{pi}"), "GET /v1/radar/early_fraud_warnings".to_string()],
        "no separate read of {charge}"
    );
}

#[tokio::test]
async fn a_charge_paid_without_a_card_costs_no_radar_read() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec { paid_without_card: Some("sepa_debit".into()), ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} 5.00 duplicate")).await;
    app.card(id).await;
    assert_eq!(reads(&app), [format!("GET /v1/charges/{charge}")]);
}

#[tokio::test]
async fn a_card_charge_is_still_checked_with_radar() {
    let app = TestApp::spawn().await;
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 5.00 duplicate")).await;
    app.card(id).await;
    assert_eq!(reads(&app), [format!("GET /v1/charges/{charge}"), "GET /v1/radar/early_fraud_warnings".to_string()]);
}
