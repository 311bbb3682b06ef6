//! What Slack sends us, parsed leniently: only the fields refund-desk reads, every one optional
//! where Slack may leave it out, so new or unusual payloads never turn into errors for a user.

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// A slash command (form body).
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub text: String,
    pub user_id: String,
    #[serde(default)]
    pub channel_id: String,
    pub team_id: Option<String>,
    pub response_url: Option<String>,
    pub trigger_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdField {
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    pub channel_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Action {
    #[serde(default)]
    pub action_id: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewState {
    #[serde(default)]
    pub values: HashMap<String, HashMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct View {
    #[serde(default)]
    pub callback_id: String,
    #[serde(default)]
    pub private_metadata: String,
    pub state: Option<ViewState>,
}

impl View {
    /// The text typed into an input, by block id and action id.
    pub fn input(&self, block_id: &str, action_id: &str) -> Option<String> {
        let value = self.state.as_ref()?.values.get(block_id)?.get(action_id)?;
        value
            .get("value")
            .and_then(Value::as_str)
            .or_else(|| value.pointer("/selected_option/value").and_then(Value::as_str))
            .map(str::to_string)
    }
}

/// An interaction (`payload` form field): `block_actions`, `view_submission`, `view_closed`, ...
#[derive(Debug, Clone, Deserialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub user: IdField,
    pub trigger_id: Option<String>,
    pub channel: Option<IdField>,
    pub container: Option<Container>,

    #[serde(default)]
    pub actions: Vec<Action>,
    pub view: Option<View>,
}

impl Interaction {
    /// The channel the clicked message is in.
    pub fn channel_id(&self) -> Option<String> {
        self.channel
            .as_ref()
            .map(|c| c.id.clone())
            .or_else(|| self.container.as_ref().and_then(|c| c.channel_id.clone()))
            .filter(|c| !c.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slacks_sample_payloads_parse() {
        let block: Interaction =
            serde_json::from_str(include_str!("../../tests/fixtures/slack/BlockActionPayload.json")).unwrap();
        assert_eq!(block.kind, "block_actions");
        assert!(!block.actions.is_empty());
        let view: Interaction =
            serde_json::from_str(include_str!("../../tests/fixtures/slack/ViewSubmissionPayload.json")).unwrap();
        assert_eq!(view.kind, "view_submission");
        assert!(view.view.is_some());
        let cmd: SlashCommand =
            serde_json::from_str(include_str!("../../tests/fixtures/slack/SlashCommandPayload.json")).unwrap();
        assert_eq!(cmd.text, "");
    }

    #[test]
    fn inputs_are_read_by_block_and_action() {
        let json = r#"{"type":"view_submission","user":{"id":"U1"},"view":{"callback_id":"c","private_metadata":"R-1",
            "state":{"values":{"b":{"a":{"type":"plain_text_input","value":"too late"}},
                               "s":{"r":{"type":"static_select","selected_option":{"value":"dup"}}}}}}}"#;
        let i: Interaction = serde_json::from_str(json).unwrap();
        let view = i.view.unwrap();
        assert_eq!(view.input("b", "a").as_deref(), Some("too late"));
        assert_eq!(view.input("s", "r").as_deref(), Some("dup"));
        assert_eq!(view.input("b", "x"), None);
    }
}
