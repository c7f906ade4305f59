//! YAML configuration files, read with `yaml-rust2` (the parser Boundary's policies use, so the
//! workspace has one maintained YAML parser) and turned into typed values through serde.
//!
//! Every error carries the line and column it is about: a syntax error where the scanner
//! stopped, a wrong type or an unknown field at the key it belongs to.

use serde::de::DeserializeOwned;
use yaml_rust2::{Yaml, YamlLoader};

/// An error at a place in the text (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    /// The field it is about (`providers.openai.keys.1`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{}:{}: field `{field}`: {}",
                self.line, self.col, self.message
            ),
            None => write!(f, "{}:{}: {}", self.line, self.col, self.message),
        }
    }
}

/// `text` (one YAML document; empty means an empty mapping) as a `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| YamlError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        field: None,
        message: e.info().to_string(),
    })?;
    if docs.len() > 1 {
        return Err(YamlError {
            line: 1,
            col: 1,
            field: None,
            message: "more than one YAML document (`---`): a config is one document".into(),
        });
    }
    let value = match docs.into_iter().next() {
        None | Some(Yaml::Null) => serde_json::Value::Object(Default::default()),
        Some(doc) => to_json(&doc, &mut Vec::new())
            .map_err(|(path, message)| at_path(text, &path, message))?,
    };
    let mut track = serde_path_to_error::Track::new();
    T::deserialize(serde_path_to_error::Deserializer::new(&value, &mut track)).map_err(|e| {
        let path: Vec<String> = track
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        at_path(text, &path, e.to_string())
    })
}

fn at_path(text: &str, path: &[String], message: String) -> YamlError {
    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
    let (line, col) = locate(text, &keys).unwrap_or((1, 1));
    YamlError {
        line,
        col,
        field: (!path.is_empty()).then(|| path.join(".")),
        message,
    }
}

/// A YAML node as JSON, for serde. Keys must be scalars; `path` is where `node` is.
fn to_json(
    node: &Yaml,
    path: &mut Vec<String>,
) -> Result<serde_json::Value, (Vec<String>, String)> {
    use serde_json::Value;
    Ok(match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => match r.parse::<f64>() {
            Ok(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| (path.clone(), format!("{r} is not a finite number")))?,
            Err(_) => return Err((path.clone(), format!("{r} is not a number"))),
        },
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                out.push(to_json(item, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Real(r) => r.clone(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return Err((path.clone(), "a mapping key must be a plain value".into())),
                };
                path.push(key.clone());
                let value = to_json(v, path)?;
                path.pop();
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err((path.clone(), "YAML aliases are not supported".into())),
        Yaml::BadValue => return Err((path.clone(), "not a valid YAML value".into())),
    })
}

/// Line and column (1-based) of the key at `path` in block-style YAML: sequence items
/// (`- ...`) count as the path's numeric segments. Falls back to the closest enclosing key.
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    // (indent, key) of the enclosing keys; a sequence item is keyed by its index.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut seq_counts: Vec<(usize, usize)> = Vec::new(); // (indent of `-`, next index)
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = raw.len() - trimmed.len();
        let mut rest = trimmed;
        while let Some(item) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            while stack.last().is_some_and(|(d, _)| *d >= indent) {
                stack.pop();
            }
            seq_counts.retain(|(d, _)| *d <= indent);
            let index = match seq_counts.last_mut() {
                Some((d, n)) if *d == indent => {
                    *n += 1;
                    *n - 1
                }
                _ => {
                    seq_counts.push((indent, 1));
                    0
                }
            };
            stack.push((indent, index.to_string()));
            if matches_path(&stack, path) {
                return Some((i + 1, indent + 1));
            }
            let after = item.trim_start();
            indent += rest.len() - after.len();
            rest = after;
        }
        let Some((key, _)) = rest.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        if matches_path(&stack, path) {
            return Some((i + 1, indent + 1));
        }
    }
    (path.len() > 1)
        .then(|| locate(text, &path[..path.len() - 1]))
        .flatten()
}

fn matches_path(stack: &[(usize, String)], path: &[&str]) -> bool {
    stack.len() == path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        listen: Option<String>,
        #[serde(default)]
        keys: Vec<Key>,
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Key {
        name: String,
        weight: Option<u32>,
    }

    #[test]
    fn a_document_becomes_typed_values_and_empty_is_an_empty_mapping() {
        let c: Cfg = from_str(
            "listen: 127.0.0.1:8787\nport: 8\nkeys:\n  - name: a\n    weight: 2\n  - { name: b }\n",
        )
        .unwrap();
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:8787"));
        assert_eq!(
            c.keys[1],
            Key {
                name: "b".into(),
                weight: None
            }
        );
        let c: Cfg = from_str("").unwrap();
        assert_eq!(c.listen, None);
        let c: Cfg = from_str("# only a comment\n").unwrap();
        assert!(c.keys.is_empty());
    }

    #[test]
    fn errors_point_at_the_line_and_column_of_their_field() {
        let e = from_str::<Cfg>("listen: x\nkeys:\n  - name: a\n  - name: b\n    weight: heavy\n")
            .unwrap_err();
        assert_eq!((e.line, e.col), (5, 5), "{e}");
        assert_eq!(e.field.as_deref(), Some("keys.1.weight"));
        let e = from_str::<Cfg>("listen: x\nlisten_on: y\n").unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
        let e = from_str::<Cfg>("port: 70000\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 1), "{e}");
        let e = from_str::<Cfg>("listen: [unclosed\n").unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.line >= 1 && !e.message.is_empty(), "{e}");
    }
}
