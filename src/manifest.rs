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

/// The manifest for Socket Mode: `socket_mode_enabled`, and no request URLs (Slack's traffic
/// comes over the connection the desk opens with its app-level token).
pub fn for_socket_mode() -> String {
    let mut manifest: serde_json::Value = serde_json::from_str(MANIFEST).expect("the checked-in manifest is JSON");
    if let Some(commands) = manifest["features"]["slash_commands"].as_array_mut() {
        for command in commands {
            if let Some(fields) = command.as_object_mut() {
                fields.remove("url");
            }
        }
    }
    let settings = &mut manifest["settings"];
    if let Some(fields) = settings["interactivity"].as_object_mut() {
        fields.remove("request_url");
    }
    if let Some(fields) = settings["event_subscriptions"].as_object_mut() {
        fields.remove("request_url");
    }
    settings["socket_mode_enabled"] = true.into();
    serde_json::to_string_pretty(&manifest).expect("JSON serializes")
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
        // A typed @someone must arrive as <@U...|name>, which `/refund delegate` reads.
        assert_eq!(m["features"]["slash_commands"][0]["should_escape"], true);
        assert_eq!(m["settings"]["interactivity"]["request_url"], "https://refunds.acme.com/slack/interactions");
        assert_eq!(m["settings"]["event_subscriptions"]["request_url"], "https://refunds.acme.com/slack/events");
        assert_eq!(m["settings"]["event_subscriptions"]["bot_events"][0], "app_home_opened");
        let scopes = m["oauth_config"]["scopes"]["bot"].to_string();
        for scope in ["commands", "chat:write"] {
            assert!(scopes.contains(scope), "{scope}");
        }
        assert!(for_url("http://insecure.example").is_err());
    }

    #[test]
    fn the_socket_mode_manifest_has_no_request_urls_and_the_same_command_events_and_scopes() {
        let m: Value = serde_json::from_str(&for_socket_mode()).unwrap();
        assert_eq!(m["settings"]["socket_mode_enabled"], true);
        assert!(!for_socket_mode().contains("https://"), "no URL at all: {m}");
        assert_eq!(m["features"]["slash_commands"][0]["command"], "/refund");
        assert_eq!(m["settings"]["interactivity"]["is_enabled"], true);
        assert_eq!(m["settings"]["event_subscriptions"]["bot_events"][0], "app_home_opened");
        let http: Value = serde_json::from_str(&for_url("https://refunds.acme.com").unwrap()).unwrap();
        assert_eq!(m["oauth_config"], http["oauth_config"]);
    }
}
