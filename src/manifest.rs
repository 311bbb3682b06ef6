//! The Slack app manifest (`manifest/manifest.json`), with its placeholder URLs replaced.

/// The base URL the checked-in manifest uses.
pub const PLACEHOLDER: &str = "https://refund-desk.example.com";
const MANIFEST: &str = include_str!("../manifest/manifest.json");

/// The manifest for a desk reachable at `base_url` (e.g. `https://refunds.acme.com`).
pub fn for_url(base_url: &str) -> Result<String, String> {
    let url = url::Url::parse(base_url).map_err(|e| format!("`{base_url}` is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("Slack only calls https:// URLs".into());
    }
    Ok(MANIFEST.replace(PLACEHOLDER, base_url.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_manifest_names_every_route_the_desk_serves() {
        let m: Value = serde_json::from_str(&for_url("https://refunds.acme.com/").unwrap()).unwrap();
        assert_eq!(m["features"]["slash_commands"][0]["command"], "/refund");
        assert_eq!(m["features"]["slash_commands"][0]["url"], "https://refunds.acme.com/slack/commands");
        assert_eq!(m["settings"]["interactivity"]["request_url"], "https://refunds.acme.com/slack/interactions");
        assert_eq!(m["settings"]["event_subscriptions"]["request_url"], "https://refunds.acme.com/slack/events");
        assert_eq!(m["settings"]["event_subscriptions"]["bot_events"][0], "app_home_opened");
        let scopes = m["oauth_config"]["scopes"]["bot"].to_string();
        for scope in ["commands", "chat:write"] {
            assert!(scopes.contains(scope), "{scope}");
        }
        assert!(for_url("http://insecure.example").is_err());
    }
}
