//! App Home, `/refund list` and reminders read through the status and requester indexes, so
//! their cost does not grow with the number of stored requests. This measures building one
//! approver's and one requester's Home, showing the same content, from stores of 25 and of
//! 100,000 requests.
//!
//! `cargo run --release --example home_scaling`

use chrono::Utc;
use refund_desk::domain::*;
use refund_desk::storage::Store;
use refund_desk::worker::handlers::home_for;
use std::time::{Duration, Instant};

/// `count` requests, shaped so that both Homes show the same thing at every size: 5 waiting
/// for approval, and the measured requester's 20 newest. Only the store's size differs.
async fn fill(store: &Store, count: u64) {
    let usd = Currency::parse("usd").expect("usd");
    let now = Utc::now();
    for n in 0..count {
        let user = if n >= count - 20 { "U0SUPPORT07".to_string() } else { format!("U0OTHER{:02}", n % 50) };
        let new = NewRequest::full_refund(
            UserId::parse(&user).expect("id"),
            "C1",
            PaymentRef::parse("ch_1").expect("id"),
            RefundReason::Duplicate,
        );
        let mut r = RefundRequest::new(RequestId::new(1_000 + n), new, now);
        r.amount = Some(Money::new(100, usd));
        r.status = if n % (count / 5) == 0 { RequestStatus::AwaitingApproval } else { RequestStatus::Succeeded };
        store.import_request(&r).await.expect("import");
    }
}

async fn build_homes(store: &Store) -> usize {
    let approver = UserId::parse("U0APPROVE1").expect("id");
    let requester = UserId::parse("U0SUPPORT07").expect("id");
    let mut bytes = 0;
    let authority = Authority::of(Approvers::new([approver.clone()]));
    for user in [&approver, &requester] {
        let view = home_for(store, user, &authority, Utc::now()).await.expect("read");
        bytes += serde_json::to_string(&view).expect("json").len();
    }
    bytes
}

#[tokio::main]
async fn main() {
    for count in [25u64, 100_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        fill(&store, count).await;
        let rounds = 200;
        build_homes(&store).await;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes += build_homes(&store).await;
        }
        let each: Duration = started.elapsed() / rounds;
        println!(
            "{count:>7} stored requests: both Homes built in {each:?} each ({} bytes of Block Kit)",
            bytes / rounds as usize
        );
    }
}
