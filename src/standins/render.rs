//! Block Kit as plain text, so the demo can print what people would see.

use serde_json::Value;

fn text(v: &Value) -> String {
    v["text"].as_str().unwrap_or_default().to_string()
}

/// One line per block; fields side by side as `label: value`.
pub fn blocks_to_text(blocks: &Value) -> String {
    let mut out = vec![];
    for block in blocks.as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("header") => out.push(format!("== {} ==", text(&block["text"]))),
            Some("section") => {
                if !block["text"].is_null() {
                    out.push(text(&block["text"]));
                }
                for field in block["fields"].as_array().into_iter().flatten() {
                    out.push(format!("  {}", text(field).replacen('\n', " ", 1)));
                }
            }
            Some("context") => {
                for el in block["elements"].as_array().into_iter().flatten() {
                    out.push(format!("  ({})", text(el)));
                }
            }
            Some("actions") => {
                let buttons: Vec<String> = block["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| format!("[{}]", text(&b["text"])))
                    .collect();
                out.push(format!("  {}", buttons.join(" ")));
            }
            _ => {}
        }
    }
    out.join("\n")
}
