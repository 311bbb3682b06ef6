//! Approvals that never stall: senior approvers above a threshold, escalation, delegation, a
//! note on approval, the typed amount, the requester's Remind button and the daily digest.

use crate::helpers::*;
use refund_desk::domain::{Approvers, RequestId, RequestStatus, UserId};
use refund_desk_standins::driver::{
    APPROVE_AMOUNT_BLOCK, APPROVE_CALLBACK, APPROVE_NOTE_BLOCK, REMIND_ACTION, SlackDriver,
};
use refund_desk_standins::slack::Posted;
use refund_desk_standins::{ChargeSpec, wait_for};
use serde_json::Value;
use std::time::Duration;

const SENIOR: &str = "U0SENIOR01";
const ESCALATOR: &str = "U0ESCALAT1";
const DELEGATE: &str = "U0DELEGAT1";

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn with_senior_and_escalation(s: &mut refund_desk::config::Settings) {
    s.slack.seniors.named = Approvers::new([UserId::parse(SENIOR).unwrap()]);
    s.slack.escalation.named = Approvers::new([UserId::parse(ESCALATOR).unwrap()]);
}

/// A request for `amount` on a fresh $10,000 charge, waiting for approval, with its card.
async fn waiting_for(app: &TestApp, amount: &str) -> (RequestId, Posted) {
    let charge = app.add_charge(ChargeSpec { amount: 1_000_000, ..ChargeSpec::default() });
    let id = app.request_refund(&format!("{charge} {amount} duplicate")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    let store = app.store();
    wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap()?.card }).await.expect("card recorded");
    (id, card)
}

/// Every private note `who` got so far: ephemeral, or by direct message.
fn notes(app: &TestApp, who: &str) -> Vec<String> {
    let ephemeral = app
        .slack
        .ephemerals()
        .into_iter()
        .filter(|e| e["user"] == who)
        .filter_map(|e| e["text"].as_str().map(str::to_string));
    ephemeral.chain(app.direct_messages(who)).collect()
}

/// The private note `who` got after `before` (their notes until then) that contains `part`.
async fn told(app: &TestApp, who: &str, part: &str, before: &[String]) -> String {
    let found = wait_for(DEADLINE, || {
        let mut new = notes(app, who);
        for old in before {
            if let Some(i) = new.iter().position(|n| n == old) {
                new.remove(i);
            }
        }
        new.into_iter().find(|t| t.contains(part))
    })
    .await;
    found.unwrap_or_else(|| panic!("{who} was never told {part:?} after {before:?}: {:?}", notes(app, who)))
}

fn thread_has(app: &TestApp, card: &Posted, part: &str) -> bool {
    app.thread_texts(card).iter().any(|t| t.contains(part))
}

#[tokio::test]
async fn above_senior_from_a_non_senior_is_refused_and_a_senior_approves() {
    let app =
        TestApp::spawn_configured("[policy.currency.usd]\nsenior_from = \"2500.00\"\n", with_senior_and_escalation)
            .await;
    let (id, card) = waiting_for(&app, "3000.00").await;
    assert!(card.blocks.to_string().contains("one approval must come from a senior approver"), "{}", card.blocks);

    let before = notes(&app, APPROVER);
    app.approve(APPROVER, id, &card).await;
    let note = told(&app, APPROVER, "senior approver", &before).await;
    assert!(note.contains("$3,000.00") && note.contains("$2,500.00"), "{note}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval, "nothing changed");

    app.approve(SENIOR, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refund_posts().len(), 1);
    let audit = app.store().audit_of(id).await.unwrap();
    assert!(audit.iter().any(|e| e.detail.as_deref().is_some_and(|d| d.contains("senior approval"))), "{audit:?}");

    // Below the threshold, anyone may approve, and a senior may too.
    let (small, small_card) = waiting_for(&app, "100.00").await;
    assert!(!small_card.blocks.to_string().contains("senior"), "no senior rule below it");
    app.approve(SENIOR, small, &small_card).await;
    app.wait_for_status(small, RequestStatus::Submitted).await;
}

#[tokio::test]
async fn a_request_waiting_past_escalate_after_is_escalated_once_and_the_escalation_approvers_decide() {
    let app = TestApp::spawn_configured(
        "[policy]\nremind_after = \"1h\"\nescalate_after = \"2h\"\nexpire_after = \"2days\"\n",
        with_senior_and_escalation,
    )
    .await;
    let (id, card) = waiting_for(&app, "40.00").await;
    let before = notes(&app, ESCALATOR);
    app.approve(ESCALATOR, id, &card).await;
    told(&app, ESCALATOR, "not escalated yet", &before).await;
    let store = app.store();
    let ctx = app.app.as_ref().unwrap().context();

    // Past remind_after: the reminder, no escalation yet.
    ctx.advance_clock(Duration::from_secs(90 * 60));
    let reminded = wait_for(DEADLINE, || thread_has(&app, &card, ":alarm_clock:").then_some(())).await;
    assert!(reminded.is_some(), "{:?}", app.thread_texts(&card));
    app.wait_until_idle().await;
    assert_eq!(app.request(id).await.escalated_at, None, "not before escalate_after");

    // Past escalate_after: escalated, and the thread calls the escalation approvers.
    ctx.advance_clock(Duration::from_secs(60 * 60));
    wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap()?.escalated_at }).await.expect("escalated");
    let escalated = wait_for(DEADLINE, || {
        app.thread_texts(&card).into_iter().find(|t| t.contains("Escalated") && t.contains(&format!("<@{ESCALATOR}>")))
    })
    .await;
    assert!(escalated.is_some(), "{:?}", app.thread_texts(&card));
    let audit = app.store().audit_of(id).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.detail.as_deref().is_some_and(|d| d.starts_with("escalated"))).count(), 1);
    let edited =
        wait_for(DEADLINE, || app.slack.message(&card.ts).filter(|m| m.blocks.to_string().contains("Escalated")));
    assert!(edited.await.is_some(), "the card says so");

    // The requester's reminder now goes to the escalation approvers.
    let dm =
        wait_for(DEADLINE, || app.slack.messages_in(REQUESTER).into_iter().find(|m| m.text.contains("with finance")));
    let dm = dm.await.expect("told it is with finance");
    assert_eq!(press_remind(&app, REQUESTER, id, &dm).await, 200);
    let nudge = wait_for(DEADLINE, || app.thread_texts(&card).into_iter().find(|t| t.contains(":wave:"))).await;
    assert!(nudge.is_some_and(|t| t.contains(&format!("<@{ESCALATOR}>"))));

    // App Home shows it to the escalation approver, who may now approve.
    assert_eq!(app.driver.open_home(ESCALATOR).await, 200);
    let home = wait_for(DEADLINE, || app.slack.home_of(ESCALATOR)).await.expect("published").0.to_string();
    assert!(home.contains(&id.to_string()) && home.contains("refund_approve"), "{home}");
    app.approve(ESCALATOR, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    app.wait_until_idle().await;
    let texts = app.thread_texts(&card);
    assert_eq!(texts.iter().filter(|t| t.contains("Escalated")).count(), 1, "escalated once: {texts:?}");
}

#[tokio::test]
async fn a_delegate_decides_on_behalf_of_an_approver_until_the_day_ends_but_never_their_own_request() {
    // In Tokyo, so the day that ends is not UTC's.
    let app = TestApp::spawn_with_policy("[policy]\ntimezone = \"Asia/Tokyo\"\n").await;
    let tz = chrono_tz::Asia::Tokyo;
    let today = chrono::Utc::now().with_timezone(&tz).date_naive();
    // Only approvers may delegate.
    let refused = app.slash_refund(OUTSIDER, &format!("delegate <@{DELEGATE}|dee> until {today}")).await;
    assert!(refused.contains("Only finance approvers"), "{refused}");
    let before = notes(&app, DELEGATE);
    let answer = app.slash_refund(APPROVER, &format!("delegate <@{DELEGATE}|dee> until {today}")).await;
    assert!(answer.contains(&format!("<@{DELEGATE}>")) && answer.contains(&today.to_string()), "{answer}");
    told(&app, DELEGATE, "handed you their refund approvals", &before).await;
    assert!(app.slash_refund(APPROVER, "delegate").await.contains(&format!("<@{DELEGATE}>")));

    // The delegate sees the request in App Home and approves it on the approver's behalf.
    let (id, card) = app.waiting_request().await;
    assert_eq!(app.driver.open_home(DELEGATE).await, 200);
    let home = wait_for(DEADLINE, || app.slack.home_of(DELEGATE)).await.expect("published").0.to_string();
    assert!(home.contains(&id.to_string()), "{home}");
    app.approve(DELEGATE, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    let on_behalf = format!("<@{DELEGATE}> on behalf of <@{APPROVER}>");
    assert!(wait_for(DEADLINE, || thread_has(&app, &card, &on_behalf).then_some(())).await.is_some());
    let edited =
        wait_for(DEADLINE, || app.slack.message(&card.ts).filter(|m| m.blocks.to_string().contains(&on_behalf))).await;
    assert!(edited.is_some(), "the card says on whose behalf");
    let approved = app.request(id).await.approved.unwrap();
    assert_eq!((approved.by, approved.on_behalf_of), (user(DELEGATE), Some(user(APPROVER))));
    let audit = app.store().audit_of(id).await.unwrap();
    assert!(audit.iter().any(|e| e.detail.as_deref() == Some(&format!("on behalf of {APPROVER}"))), "{audit:?}");

    // Their own request: never, delegation or not.
    let charge = app.add_charge(ChargeSpec::default());
    let own = request_id_in(&app.slash_refund(DELEGATE, &format!("{charge} 25.00 duplicate")).await);
    app.wait_for_status(own, RequestStatus::AwaitingApproval).await;
    let own_card = app.card(own).await;
    let before = notes(&app, DELEGATE);
    app.approve(DELEGATE, own, &own_card).await;
    told(&app, DELEGATE, "someone else in finance has to approve", &before).await;
    assert_eq!(app.request(own).await.status, RequestStatus::AwaitingApproval);

    // A minute before the day ends in Tokyo it still holds; a minute after, it is over.
    let (last, last_card) = app.waiting_request().await;
    let (late, late_card) = app.waiting_request().await;
    let ctx = app.app.as_ref().unwrap().context();
    let ends = refund_desk::domain::policy::start_of_day(tz, today.succ_opt().unwrap());
    ctx.advance_clock((ends - ctx.now() - chrono::Duration::minutes(1)).to_std().unwrap());
    app.approve(DELEGATE, last, &last_card).await;
    app.wait_for_status(last, RequestStatus::Submitted).await;
    ctx.advance_clock(Duration::from_secs(120));
    let before = notes(&app, DELEGATE);
    app.approve(DELEGATE, late, &late_card).await;
    told(&app, DELEGATE, "Only finance approvers", &before).await;
    assert_eq!(app.request(late).await.status, RequestStatus::AwaitingApproval);
}

#[tokio::test]
async fn delegation_off_ends_it_and_a_past_day_is_refused() {
    let app = TestApp::spawn().await;
    let yesterday = chrono::Utc::now().date_naive().pred_opt().unwrap();
    let refused = app.slash_refund(APPROVER, &format!("delegate <@{DELEGATE}> until {yesterday}")).await;
    assert!(refused.contains("has passed"), "{refused}");
    let tomorrow = chrono::Utc::now().date_naive().succ_opt().unwrap();
    app.slash_refund(APPROVER, &format!("delegate <@{DELEGATE}> until {tomorrow}")).await;
    let ended = app.slash_refund(APPROVER, "delegate off").await;
    assert!(ended.contains("has ended"), "{ended}");
    let (id, card) = app.waiting_request().await;
    let before = notes(&app, DELEGATE);
    app.approve(DELEGATE, id, &card).await;
    told(&app, DELEGATE, "Only finance approvers", &before).await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
}

/// The approval form the desk opened last, for request `id`.
async fn approval_form(app: &TestApp, id: RequestId) -> Value {
    let opened =
        wait_for(DEADLINE, || {
            app.slack.views_opened().into_iter().rev().find(|v| {
                v["view"]["callback_id"] == APPROVE_CALLBACK && v["view"]["private_metadata"] == id.to_string()
            })
        })
        .await;
    opened.expect("the approval form opened")
}

#[tokio::test]
async fn with_require_approval_note_approve_opens_a_form_whose_note_goes_in_the_thread_and_audit() {
    let app = TestApp::spawn_with_policy("[policy]\nrequire_approval_note = true\n").await;
    let (id, card) = app.waiting_request().await;
    assert!(card.blocks.to_string().contains("Approving asks for a note"), "{}", card.blocks);
    app.approve(APPROVER, id, &card).await;
    let form = approval_form(&app, id).await;
    assert!(form["trigger_id"].as_str().unwrap().ends_with(APPROVER), "opened from the click's trigger");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval, "the click alone approves nothing");

    let meta = id.to_string();
    let typed = [(APPROVE_NOTE_BLOCK, "fine by me")];
    assert_eq!(app.driver.close_view(APPROVER, APPROVE_CALLBACK, &meta, &typed).await, 200);
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval, "closing the form changes nothing");
    let (status, answer) =
        app.driver.submit_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_NOTE_BLOCK, "  ")]).await;
    assert_eq!(status, 200);
    assert!(answer["errors"][APPROVE_NOTE_BLOCK].as_str().is_some_and(|e| e.contains("needs a note")), "{answer}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);

    let note = "customer charged twice, ticket 4411";
    let (_, answer) = app.driver.submit_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_NOTE_BLOCK, note)]).await;
    assert!(answer.is_null(), "an empty answer closes the form: {answer}");
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert!(wait_for(DEADLINE, || thread_has(&app, &card, note).then_some(())).await.is_some());
    let audit = app.store().audit_of(id).await.unwrap();
    assert!(audit.iter().any(|e| e.detail.as_deref().is_some_and(|d| d.contains(note))), "{audit:?}");
}

#[tokio::test]
async fn above_confirm_amount_from_a_wrong_typed_amount_is_refused_and_the_right_one_approves() {
    let app = TestApp::spawn_with_policy("[policy.currency.usd]\nconfirm_amount_from = \"1000.00\"\n").await;
    let (id, card) = waiting_for(&app, "1250.00").await;
    app.approve(APPROVER, id, &card).await;
    let form = approval_form(&app, id).await;
    assert!(form["view"].to_string().contains(APPROVE_AMOUNT_BLOCK), "{form}");
    let meta = id.to_string();

    // Closing the form changes nothing.
    assert_eq!(app.driver.close_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "1250")]).await, 200);
    let (_, wrong) =
        app.driver.submit_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "125.00")]).await;
    assert!(wrong["errors"][APPROVE_AMOUNT_BLOCK].as_str().is_some_and(|e| e.contains("not the amount")), "{wrong}");
    let (_, garbage) =
        app.driver.submit_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "lots")]).await;
    assert!(garbage["errors"][APPROVE_AMOUNT_BLOCK].is_string(), "{garbage}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);
    assert!(app.stripe.refund_posts().is_empty());

    let (_, right) =
        app.driver.submit_view(APPROVER, APPROVE_CALLBACK, &meta, &[(APPROVE_AMOUNT_BLOCK, "$1,250")]).await;
    assert!(right.is_null(), "{right}");
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refund_posts()[0].param("amount"), Some("125000"));

    // Below the threshold a click (with Slack's confirmation) approves at once.
    let (small, small_card) = waiting_for(&app, "50.00").await;
    app.approve(APPROVER, small, &small_card).await;
    app.wait_for_status(small, RequestStatus::Submitted).await;
}

/// `user` presses Remind approvers in the direct message `message`.
async fn press_remind(app: &TestApp, user: &str, id: RequestId, message: &Posted) -> u16 {
    let mut payload = SlackDriver::click_payload(user, REMIND_ACTION, &id.to_string(), &message.ts);
    payload["container"]["channel_id"] = message.channel.clone().into();
    payload["channel"]["id"] = message.channel.clone().into();
    payload["actions"][0]["block_id"] = format!("remind_{id}").into();
    app.driver.post_interaction(&payload).await
}

#[tokio::test]
async fn the_requester_is_told_by_direct_message_and_may_remind_approvers_once_per_cooldown() {
    let app = TestApp::spawn_with_policy("[policy]\nremind_cooldown = \"1h\"\n").await;
    let (id, card) = app.waiting_request().await;
    let dm = wait_for(DEADLINE, || {
        app.slack.messages_in(REQUESTER).into_iter().find(|m| m.text.contains("is with finance"))
    })
    .await
    .expect("the requester hears their request is with finance");
    assert!(dm.text.contains(&id.to_string()) && dm.text.contains("$25.00"), "{}", dm.text);
    assert!(dm.blocks.to_string().contains(REMIND_ACTION), "{}", dm.blocks);

    assert_eq!(press_remind(&app, REQUESTER, id, &dm).await, 200);
    let nudge = |app: &TestApp| app.thread_texts(&card).into_iter().filter(|t| t.contains(":wave:")).count();
    assert!(wait_for(DEADLINE, || (nudge(&app) == 1).then_some(())).await.is_some());
    let reminder = app.thread_texts(&card).into_iter().find(|t| t.contains(":wave:")).unwrap();
    let (_, mentioned) = reminder.rsplit_once(". ").expect("the mentions end the reminder");
    assert!(
        mentioned.contains(&format!("<@{APPROVER}>")) && !mentioned.contains(&format!("<@{REQUESTER}>")),
        "{reminder}"
    );

    // Within the cooldown: told when, and nothing posted.
    let before = notes(&app, REQUESTER);
    assert_eq!(press_remind(&app, REQUESTER, id, &dm).await, 200);
    let when = told(&app, REQUESTER, "you can remind them again after", &before).await;
    let next = app.request(id).await.nudged_at.unwrap() + chrono::Duration::hours(1);
    assert!(when.contains(&next.format("%Y-%m-%d %H:%M").to_string()), "{when}");
    // Someone else cannot press it.
    let before = notes(&app, OUTSIDER);
    assert_eq!(press_remind(&app, OUTSIDER, id, &dm).await, 200);
    told(&app, OUTSIDER, "Only the person who asked", &before).await;
    app.wait_until_idle().await;
    assert_eq!(nudge(&app), 1);

    // After the cooldown, once more; from App Home too.
    app.app.as_ref().unwrap().context().advance_clock(Duration::from_secs(3601));
    assert_eq!(app.driver.open_home(REQUESTER).await, 200);
    let home = wait_for(DEADLINE, || app.slack.home_of(REQUESTER)).await.expect("published").0.to_string();
    assert!(home.contains(REMIND_ACTION), "{home}");
    assert_eq!(app.driver.click_in_home(REQUESTER, REMIND_ACTION, &id.to_string()).await, 200);
    assert!(wait_for(DEADLINE, || (nudge(&app) == 2).then_some(())).await.is_some());

    // Once decided, the message loses its button.
    app.approve(APPROVER, id, &card).await;
    let edited =
        wait_for(DEADLINE, || app.slack.message(&dm.ts).filter(|m| !m.blocks.to_string().contains(REMIND_ACTION)))
            .await;
    assert!(edited.is_some(), "the button goes once the request no longer waits");
}
