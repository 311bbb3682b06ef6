use crate::helpers::*;
use refund_desk::domain::{Approvers, RequestStatus, UserId};
use refund_desk_standins::wait_for;
use std::time::Duration;

const GROUP: &str = "S0FINANCE1";

fn group_only(settings: &mut refund_desk::config::Settings) {
    settings.slack.approvers = Approvers::default();
    settings.slack.approver_group = Some(GROUP.to_string());
    settings.slack.approver_refresh = Duration::from_millis(100);
}

#[tokio::test]
async fn members_of_the_approver_group_approve_and_leavers_no_longer_can() {
    let mut app = TestApp::spawn().await;
    app.slack.set_group_members(GROUP, &[APPROVER, APPROVER_2]);
    app.reconfigure(group_only).await;
    let ctx = app.app.as_ref().unwrap().context();
    let member = |u: &str| UserId::parse(u).unwrap();
    wait_for(DEADLINE, || ctx.approvers().contains(&member(APPROVER_2)).then_some(())).await.expect("group read");
    assert!(app.slack.calls("usergroups.users.list").iter().all(|c| c.body["usergroup"] == GROUP));

    // APPROVER_2 leaves the group: within a refresh, they can no longer approve.
    app.slack.set_group_members(GROUP, &[APPROVER]);
    wait_for(DEADLINE, || (!ctx.approvers().contains(&member(APPROVER_2))).then_some(())).await.expect("group re-read");
    let (id, card) = app.waiting_request().await;
    app.approve(APPROVER_2, id, &card).await;
    let note = wait_for(DEADLINE, || app.slack.ephemerals().pop()).await.expect("told privately");
    assert!(note["text"].as_str().unwrap().contains("Only finance approvers"), "{note}");
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval);

    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
}

#[tokio::test]
async fn when_slack_cannot_list_the_group_the_last_members_read_are_kept() {
    let mut app = TestApp::spawn().await;
    app.slack.set_group_members(GROUP, &[APPROVER]);
    app.reconfigure(group_only).await;
    let ctx = app.app.as_ref().unwrap().context();
    let approver = UserId::parse(APPROVER).unwrap();
    wait_for(DEADLINE, || ctx.approvers().contains(&approver).then_some(())).await.expect("group read");
    let before = app.slack.calls("usergroups.users.list").len();
    for _ in 0..3 {
        app.slack.fail_next(
            "usergroups.users.list",
            200,
            serde_json::json!({ "ok": false, "error": "internal_error" }),
        );
    }
    wait_for(DEADLINE, || (app.slack.calls("usergroups.users.list").len() >= before + 3).then_some(()))
        .await
        .expect("refreshes tried");
    assert!(ctx.approvers().contains(&approver), "a failed refresh does not empty the approvers");
}
