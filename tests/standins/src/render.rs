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

/// Slack markup made readable in a terminal: `<@U123>` → `@name`, dates → their fallback text.
pub fn humanize(text: &str, names: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 1..start + end];
        if let Some(user) = inner.strip_prefix('@') {
            let name = names.iter().find(|(id, _)| *id == user).map(|(_, n)| *n).unwrap_or(user);
            out.push('@');
            out.push_str(name);
        } else if let Some((_, fallback)) = inner.split_once('|') {
            out.push_str(fallback);
        } else {
            out.push_str(inner);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_markup_becomes_plain_words() {
        let text = "Approved by <@U1> <!date^1700000000^{date_short_pretty}|2023-11-14 22:13 UTC>. &lt;ok&gt;";
        assert_eq!(humanize(text, &[("U1", "fatima")]), "Approved by @fatima 2023-11-14 22:13 UTC. <ok>");
    }
}
