//! `volt tree`: the live actor tree of a running volt, as an indented text tree.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

pub async fn print(base_url: &str, secret: Option<&str>) -> ExitCode {
    match fetch(base_url, secret).await {
        Ok(tree) => {
            print!("{}", render(&tree));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volt: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch(base_url: &str, secret: Option<&str>) -> Result<Value, String> {
    let mut url = format!("{}/v1/admin/tree", base_url.trim_end_matches('/'));
    if let Some(s) = secret {
        url.push_str("?secret=");
        url.push_str(&urlencode(s));
    }
    let res = reqwest::get(&url)
        .await
        .map_err(|e| format!("cannot reach volt at {base_url}: {e}"))?;
    let status = res.status();
    let body = res
        .text()
        .await
        .map_err(|e| format!("cannot read the answer of {base_url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{url} answered with invalid JSON: {e}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One line per actor: `name (kind) status, up 1m02s, 3 restarts, mailbox 5`.
pub fn render(tree: &Value) -> String {
    let mut out = String::new();
    line(&mut out, tree, "", "", "");
    out
}

fn line(out: &mut String, node: &Value, lead: &str, branch: &str, child_lead: &str) {
    let name = node["name"].as_str().unwrap_or("?");
    let kind = node["kind"].as_str().unwrap_or("?");
    let mut facts = vec![node["status"].as_str().unwrap_or("?").to_string()];
    if let Some(ms) = node["uptime_ms"].as_u64() {
        facts.push(format!("up {}", uptime(ms)));
    }
    match node["restarts"].as_u64() {
        Some(0) | None => {}
        Some(1) => facts.push("1 restart".into()),
        Some(n) => facts.push(format!("{n} restarts")),
    }
    if let Some(depth) = node["mailbox"].as_u64() {
        facts.push(format!("mailbox {depth}"));
    }
    let label = if name == kind || name.starts_with(&format!("{kind}:")) {
        name.to_string()
    } else {
        format!("{name} ({kind})")
    };
    let _ = writeln!(out, "{lead}{branch}{label}  [{}]", facts.join(", "));
    let children = node["children"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let next_lead = format!("{lead}{child_lead}");
        let (b, cl) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        line(out, child, &next_lead, b, cl);
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tree_renders_as_indented_branches_with_facts() {
        let tree = json!({
            "name": "Root", "kind": "Supervisor", "status": "running", "uptime_ms": 65_000,
            "restarts": 0, "children": [
                {"name": "A", "kind": "A", "status": "running", "uptime_ms": 1000, "restarts": 2,
                 "children": [{"name": "Consumer:h1", "kind": "Consumer", "status": "running",
                               "uptime_ms": 10, "restarts": 0, "mailbox": 3, "children": []}]},
                {"name": "B", "kind": "B", "status": "running", "uptime_ms": 1000, "restarts": 1,
                 "children": []}
            ]
        });
        assert_eq!(
            render(&tree),
            "Root (Supervisor)  [running, up 1m05s]\n\
             ├── A  [running, up 1s, 2 restarts]\n\
             │   └── Consumer:h1  [running, up 0s, mailbox 3]\n\
             └── B  [running, up 1s, 1 restart]\n"
        );
    }
}
