//! A PostgreSQL database for a test: a schema of its own in the database
//! `REFUND_DESK_TEST_DATABASE_URL` names, so tests running side by side never see each other's
//! rows. With the variable unset there is none, and the tests that need one say they were
//! skipped, unless `REFUND_DESK_REQUIRE_POSTGRES` is set (as `.ci/run` sets it): then a missing
//! database is a failure, not a skip.

use secrecy::SecretString;

/// The variable naming the database the tests may make schemas in.
pub const TEST_DATABASE_VAR: &str = "REFUND_DESK_TEST_DATABASE_URL";

/// A fresh, empty schema's URL (the base URL with `search_path` set to it), or `None` when no
/// test database is configured.
pub async fn fresh_database_url() -> Option<SecretString> {
    let base = match std::env::var(TEST_DATABASE_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var_os("REFUND_DESK_REQUIRE_POSTGRES").is_none(),
                "REFUND_DESK_REQUIRE_POSTGRES is set but {TEST_DATABASE_VAR} is not"
            );
            eprintln!("skipped: {TEST_DATABASE_VAR} is not set, so there is no PostgreSQL to test against");
            return None;
        }
    };
    let schema = format!("t_{}", hex::encode(rand::random::<[u8; 8]>()));
    let (client, connection) =
        tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("the test database accepts connections");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("a schema for the test");
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(SecretString::from(format!("{base}{separator}options=-c%20search_path%3D{schema}")))
}

/// Whether the integration tests run on PostgreSQL (a test database is configured).
pub fn integration_on_postgres() -> bool {
    std::env::var(TEST_DATABASE_VAR).is_ok_and(|u| !u.is_empty())
}
