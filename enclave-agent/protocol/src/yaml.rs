//! YAML that every Kubernetes reader reads alike.
//!
//! What this project writes as YAML (the CRD, kubeconfigs, the K3s config and manifests) is read
//! by Go programs that do not agree on the YAML version: kubectl reads YAML 1.1, where the plain
//! scalars `n`, `y`, `yes`, `no`, `on`, `off` are booleans, `~` is null, `0755` is octal and
//! `1:30` a sexagesimal number; kustomize and most Rust readers follow YAML 1.2, where all of
//! those are strings. An emitter that quotes only what YAML 1.2 would misread (as `serde_yaml`
//! does) writes `required: [n]` for a JWK's modulus field, and kubectl then refuses the CRD.
//!
//! [`to_string`] renders any serializable value in block style and writes a string as a plain
//! scalar only when it cannot be read as anything but that string under either version: it
//! starts with a letter or `/`, is not one of the YAML 1.1 or 1.2 keywords, and holds no
//! character sequence that means something to a YAML parser. Every other string is quoted;
//! multi-line text becomes a literal block (`|-`) so descriptions stay readable.

use serde::Serialize;
use serde_json::Value;

/// Why a value could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The value does not serialize to a JSON-like tree.
    #[error("serializing the value")]
    Serialize(#[from] serde_json::Error),
    /// The top level is not a mapping.
    #[error("the top level of a YAML document must be a mapping, got {0}")]
    NotAMapping(&'static str),
}

/// Words that some YAML version reads as a boolean or null (compared case-insensitively).
const KEYWORDS: [&str; 12] = [
    "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", "nan", "inf",
];

/// Render `value`, whose top level must be a mapping, as one YAML document (no `---`).
pub fn to_string(value: &impl Serialize) -> Result<String, YamlError> {
    let value = serde_json::to_value(value)?;
    let Value::Object(map) = &value else {
        return Err(YamlError::NotAMapping(kind(&value)));
    };
    let mut out = String::new();
    if map.is_empty() {
        out.push_str("{}\n");
    } else {
        mapping(map, 0, &mut out);
    }
    Ok(out)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Whether `s` can be written as a plain scalar and read back as the same string by YAML 1.1
/// and YAML 1.2 parsers alike.
pub fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/') {
        return false;
    }
    if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(s)) {
        return false;
    }
    if s.ends_with([' ', ':']) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") {
        return false;
    }
    // Control characters (tab included) and the byte-order mark are never plain.
    !s.chars()
        .any(|c| c.is_control() || c == '\u{feff}' || c == '\u{85}')
}

fn scalar(s: &str, indent: usize, out: &mut String) {
    if !is_plain_safe(s) && literal_block_fits(s) {
        out.push_str("|-");
        for line in s.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                push_indent(indent + 2, out);
                out.push_str(line);
            }
        }
    } else {
        flow_scalar(s, out);
    }
}

/// `s` on one line: plain when safe, else quoted.
fn flow_scalar(s: &str, out: &mut String) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if !s.chars().any(char::is_control) && !s.contains('\u{feff}') {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        // JSON's escapes are valid in a YAML double-quoted scalar.
        out.push_str(&Value::String(s.to_owned()).to_string());
    }
}

/// A literal block keeps every character of `s` when it is multi-line text without trailing
/// blanks, a leading blank or a trailing newline, and without other control characters.
fn literal_block_fits(s: &str) -> bool {
    s.contains('\n')
        && !s.ends_with('\n')
        && !s.starts_with([' ', '\n'])
        && s.split('\n')
            .all(|line| !line.ends_with([' ', '\t']) && !line.starts_with('\t'))
        && !s
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
}

fn push_indent(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn inline(value: &Value, indent: usize, out: &mut String) -> bool {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => scalar(s, indent, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(_) | Value::Object(_) => return false,
    }
    true
}

/// A mapping whose first key goes where the cursor is and whose other keys start at `indent`.
fn mapping(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            push_indent(indent, out);
        }
        flow_scalar(key, out);
        out.push(':');
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                push_indent(indent + 2, out);
                mapping(m, indent + 2, out);
            }
            // Sequences under a key sit at the key's indentation, as kubectl writes them.
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                push_indent(indent, out);
                sequence(a, indent, out);
            }
            _ => {
                out.push(' ');
                inline(value, indent, out);
                out.push('\n');
            }
        }
    }
}

/// A sequence whose first `- ` goes where the cursor is and whose other items start at `indent`.
fn sequence(items: &[Value], indent: usize, out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            push_indent(indent, out);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => mapping(m, indent + 2, out),
            Value::Array(a) if !a.is_empty() => sequence(a, indent + 2, out),
            _ => {
                inline(item, indent + 2, out);
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_1_1_keywords_and_numbers_are_quoted() {
        for word in [
            "n",
            "N",
            "y",
            "Y",
            "yes",
            "No",
            "on",
            "OFF",
            "true",
            "False",
            "null",
            "~",
            "0755",
            "1:30",
            "0x1f",
            "1_000",
            "+1",
            "-1",
            ".inf",
            ".NaN",
            "2026-11-29",
            "=",
            "<<",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "key:",
            "-",
            "*alias",
            "&anchor",
            "!tag",
            "@at",
            "`tick",
            "%pct",
            "'q",
            "\"q",
            "[a]",
            "{a}",
            "|",
            ">",
            "?",
            ",",
        ] {
            assert!(!is_plain_safe(word), "{word:?} must be quoted");
            let text = to_string(&json!({ word: word })).expect("yaml");
            let back: serde_yaml::Value = serde_yaml::from_str(&text).expect("parses");
            assert_eq!(
                back,
                serde_yaml::to_value(json!({ word: word })).expect("v"),
                "{text}"
            );
        }
        for word in [
            "nautilus",
            "kind",
            "a-b_c.d",
            "/v1/path",
            "A sentence, with (punctuation).",
        ] {
            assert!(is_plain_safe(word), "{word:?} may be plain");
        }
    }

    #[test]
    fn a_jwk_schema_renders_its_field_names_quoted() {
        let schema = json!({
            "properties": { "e": {"type": "string"}, "n": {"type": "string"} },
            "required": ["e", "n"],
        });
        let text = to_string(&schema).expect("yaml");
        assert_eq!(
            text,
            "properties:\n  e:\n    type: string\n  'n':\n    type: string\nrequired:\n- e\n- 'n'\n"
        );
    }

    #[test]
    fn structure_round_trips() {
        let value = json!({
            "apiVersion": "v1",
            "empty": {}, "none": [], "nothing": null,
            "count": 3, "ratio": 1.5, "on": true,
            "list": [ {"a": 1, "b": [1, 2]}, [ "x", ["y"] ], "z", {} ],
            "nested": { "deeper": { "key": "value" } },
            "text": "first line\n\n  indented third\nfourth",
            "trailing": "ends with newline\n",
            "tabbed": "a\tb",
            "control": "bell\u{7}",
            "quote": "it's",
        });
        let text = to_string(&value).expect("yaml");
        let back: serde_json::Value = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(back, value, "{text}");
        assert!(text.contains("text: |-\n  first line\n\n    indented third\n  fourth\n"));
    }

    #[test]
    fn only_mappings_make_documents() {
        assert!(matches!(
            to_string(&json!(["a"])),
            Err(YamlError::NotAMapping("a sequence"))
        ));
        assert_eq!(to_string(&json!({})).expect("yaml"), "{}\n");
    }
}
