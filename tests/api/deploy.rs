//! The deployment files: the systemd unit verifies where systemd is installed, and the
//! container image's recipe keeps what the README promises. Neither builds an image.

use std::process::Command;

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = deploy_file("refund-desk.service");
    for line in [
        "EnvironmentFile=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=refund-desk",
        "ReadWritePaths=/var/lib/refund-desk",
        "TimeoutStopSec=60s",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "the unit lacks {line}");
    }
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    };
    assert!(version.status.success());
    // Verified as installed, with this build's binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace("/usr/local/bin/refund-desk", env!("CARGO_BIN_EXE_refund-desk")).replace(
        "EnvironmentFile=/etc/refund-desk/refund-desk.env",
        "EnvironmentFile=-/etc/refund-desk/refund-desk.env",
    );
    let path = dir.path().join("refund-desk.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("refund-desk.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_image_runs_as_a_non_root_user_with_a_volume_and_a_healthcheck_and_documents_a_long_stop() {
    let dockerfile = deploy_file("Dockerfile");
    let from = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(from >= 2, "a multi-stage build");
    let user = dockerfile.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.contains("VOLUME [\"/var/lib/refund-desk\"]"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"healthcheck\""));
    // A Dockerfile cannot set the stop grace; the recipe tells whoever runs it.
    assert!(dockerfile.contains("--stop-timeout 60"), "the documented stop grace");
}

#[tokio::test]
async fn healthcheck_passes_against_a_running_desk_and_fails_against_nothing() {
    let healthcheck = |listen: String| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-desk"));
        cmd.arg("healthcheck").env_clear().env("REFUND_DESK_LISTEN", listen);
        cmd.output()
    };
    let app = crate::helpers::TestApp::spawn().await;
    let live = healthcheck(app.app.as_ref().unwrap().local_addr().to_string()).await.unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let dead = healthcheck(format!("127.0.0.1:{}", crate::helpers::free_port())).await.unwrap();
    assert!(!dead.status.success(), "nothing listens there");
}
