//! Stripe's rate limit: the stand-in enforces it as Stripe does, and the desk's pace stays under it.

use crate::helpers::TestApp;
use refund_desk::standins::{ChargeSpec, FakeStripe, driver};

#[tokio::test]
async fn the_stripe_stand_in_refuses_calls_past_twenty_five_a_second_as_stripe_does_in_test_mode() {
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
    // Thirty calls take far less than a second here; should they not, fewer are refused.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count() as u64 + stripe.rate_limited(), 30);
    assert!(stripe.rate_limited() > 0, "no call was refused: {statuses:?}");
    assert_eq!(statuses[..25], [200; 25], "the first 25 of a second go through");
}

#[tokio::test]
async fn a_burst_of_requests_at_the_default_pace_gets_every_card_without_a_single_429() {
    let app = TestApp::spawn().await;
    let commands: Vec<String> =
        (0..30).map(|_| format!("{} 5.00 duplicate", app.add_charge(ChargeSpec::default()))).collect();
    let ids = futures::future::join_all(commands.iter().map(|c| app.request_refund(c))).await;
    for id in ids {
        app.card(id).await;
    }
    assert_eq!(app.stripe.rate_limited(), 0, "the desk went over Stripe's rate limit");
}
