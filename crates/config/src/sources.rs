//! Configuration sources with ASP.NET Core's semantics.
//!
//! The original server is configured through `Microsoft.Extensions.Configuration`: a flat map of
//! case-insensitive keys whose path segments are joined with `:`, filled from `appsettings.json`
//! (comments and trailing commas allowed), then from environment variables where `__` stands
//! for `:`, later sources winning. Its documentation speaks in those keys, so Tessera keeps the
//! same model. It is written here because the general-purpose Rust crates (`config`, `figment`)
//! lowercase or nest keys differently and would not bind the documented spellings the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::ConfigError;

/// Where a value came from; later sources override earlier ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// Tessera's built-in default.
    Default,
    /// A JSON settings file.
    File(PathBuf),
    /// An environment variable (its name as set).
    Environment(String),
    /// A command-line flag.
    Flag(String),
}

impl Origin {
    /// The precedence rank of the source kind (higher wins).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::Default => 0,
            Self::File(_) => 1,
            Self::Environment(_) => 2,
            Self::Flag(_) => 3,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Environment(name) => write!(f, "environment {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One value as a source gave it.
#[derive(Clone, Debug)]
pub struct RawValue {
    /// The key as the source spelled it.
    pub key: String,
    /// The value, as text.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// All configured values, flattened to `Section:Sub:Key` and looked up case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct RawConfig {
    values: BTreeMap<String, RawValue>,
}

impl RawConfig {
    /// An empty configuration: every setting takes its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one key; a later call for the same key (in any casing) wins.
    pub fn set(&mut self, key: &str, value: impl Into<String>, origin: Origin) {
        let value = RawValue {
            key: key.to_owned(),
            value: value.into(),
            origin,
        };
        self.values.insert(key.to_ascii_lowercase(), value);
    }

    /// The value of `key`, if any source set it.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.values.get(&key.to_ascii_lowercase())
    }

    /// Adds a settings file. The file may be a whole JSON object or, as the original's
    /// documentation prints its blocks, a bare `"Section": { … }` member list.
    pub fn add_json_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        self.add_json(&text, Origin::File(path.to_owned()))
            .map_err(|reason| ConfigError::ParseFile {
                path: path.to_owned(),
                reason,
            })
    }

    /// Adds JSON text (comments and trailing commas allowed, as in `appsettings.json`).
    pub fn add_json(&mut self, text: &str, origin: Origin) -> Result<(), String> {
        let text = text.trim_start_matches('\u{feff}');
        let options = jsonc_parser::ParseOptions::default();
        let parsed = jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &options);
        let value = match parsed {
            Ok(value) => value,
            Err(error) if text.trim_start().starts_with('"') => {
                let wrapped = format!("{{\n{text}\n}}");
                jsonc_parser::parse_to_serde_value::<serde_json::Value>(&wrapped, &options)
                    .map_err(|_| error.to_string())?
            }
            Err(error) => return Err(error.to_string()),
        };
        match value {
            serde_json::Value::Object(_) => {
                self.flatten("", &value, &origin);
                Ok(())
            }
            serde_json::Value::Null => Ok(()),
            _ => Err("the top level must be a JSON object".into()),
        }
    }

    fn flatten(&mut self, prefix: &str, value: &serde_json::Value, origin: &Origin) {
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}:{key}")
            }
        };
        match value {
            serde_json::Value::Object(members) => {
                for (key, member) in members {
                    self.flatten(&join(key), member, origin);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.flatten(&join(&index.to_string()), item, origin);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(text) => self.set(prefix, text.clone(), origin.clone()),
            other => self.set(prefix, other.to_string(), origin.clone()),
        }
    }

    /// Adds environment variables; `__` in a name separates path segments
    /// (`DicomServer__Services__BlobMigration__FormatType`).
    pub fn add_environment(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            let key = name.replace("__", ":");
            self.set(&key, value, Origin::Environment(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_later_sources_win() {
        let mut raw = RawConfig::new();
        raw.add_json(
            r#"{"A": {"B": "file", "List": [1, true]}}"#,
            Origin::File("x.json".into()),
        )
        .unwrap();
        assert_eq!(raw.get("a:b").unwrap().value, "file");
        assert_eq!(raw.get("A:List:0").unwrap().value, "1");
        assert_eq!(raw.get("a:list:1").unwrap().value, "true");
        raw.add_environment([("a__B".to_owned(), "env".to_owned())]);
        let value = raw.get("A:B").unwrap();
        assert_eq!(value.value, "env");
        assert_eq!(value.origin, Origin::Environment("a__B".into()));
    }

    #[test]
    fn appsettings_comments_trailing_commas_and_bare_blocks_load() {
        let mut raw = RawConfig::new();
        let commented = "{\n // a comment\n \"A\": { \"B\": 1, },\n}";
        raw.add_json(commented, Origin::Default).unwrap();
        assert_eq!(raw.get("A:B").unwrap().value, "1");
        raw.add_json("\"C\": { \"D\": \"x\" }", Origin::Default)
            .unwrap();
        assert_eq!(raw.get("c:d").unwrap().value, "x");
        assert!(raw.add_json("[1]", Origin::Default).is_err());
        assert!(raw.add_json("{ \"A\": ", Origin::Default).is_err());
    }
}
