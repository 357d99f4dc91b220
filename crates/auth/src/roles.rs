//! `roles.json` in the original server's shape, and the data actions its roles grant.
//!
//! The original validated the file against a JSON schema before use: every role has a `name`
//! (letters, `-` and `_`), `dataActions` and `notDataActions` drawn from `*`, `read`, `write`,
//! `delete`, and exactly the root scope `/`; names are unique. The same file loads unchanged.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// A set of data actions (the original's `DataActions` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataActions(u8);

impl DataActions {
    /// No action.
    pub const NONE: Self = Self(0);
    /// Reading and searching: WADO, metadata, frames, QIDO, change feed, operations.
    pub const READ: Self = Self(1);
    /// Storing: STOW.
    pub const WRITE: Self = Self(1 << 1);
    /// Deleting studies, series and instances.
    pub const DELETE: Self = Self(1 << 2);
    /// Every action (`*`).
    pub const ALL: Self = Self(0b111);

    /// Whether every action of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The actions in either set.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The actions of `self` that are not in `other`.
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The action named as in `roles.json` (case-sensitive, as the original's schema).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "*" => Some(Self::ALL),
            "read" => Some(Self::READ),
            "write" => Some(Self::WRITE),
            "delete" => Some(Self::DELETE),
            _ => None,
        }
    }
}

impl fmt::Display for DataActions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Self::READ, "read"),
            (Self::WRITE, "write"),
            (Self::DELETE, "delete"),
        ]
        .into_iter()
        .filter(|(action, _)| self.contains(*action))
        .map(|(_, name)| name)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// Why a `roles.json` cannot be used; the message says where in the file.
#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        reason: String,
    },
    /// The file is not JSON of the expected shape.
    #[error("{0}")]
    Invalid(String),
}

/// One role: the actions it grants (`dataActions` minus `notDataActions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// The name a token's roles claim carries.
    pub name: String,
    /// What the role may do.
    pub allowed: DataActions,
}

/// The roles of a `roles.json`, looked up by name case-insensitively (as the original).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    by_name: HashMap<String, Role>,
}

#[derive(Deserialize)]
struct RolesContract {
    roles: Vec<RoleContract>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RoleContract {
    name: String,
    data_actions: Vec<String>,
    not_data_actions: Vec<String>,
    scopes: Vec<String>,
}

impl Roles {
    /// Reads and checks a `roles.json`.
    pub fn load(path: &Path) -> Result<Self, RolesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RolesError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parses and checks the text of a `roles.json`.
    pub fn parse(text: &str) -> Result<Self, RolesError> {
        let contract: RolesContract = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| RolesError::Invalid(e.to_string()))?;
        let mut by_name = HashMap::new();
        for (index, role) in contract.roles.into_iter().enumerate() {
            let at = |what: String| RolesError::Invalid(format!("roles[{index}]: {what}"));
            let valid_name = !role.name.is_empty()
                && role
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '-' || c == '_');
            if !valid_name {
                return Err(at(format!(
                    "name '{}' must be letters, '-' and '_'",
                    role.name
                )));
            }
            if role.scopes != ["/"] {
                return Err(at("scopes must be exactly [\"/\"]".into()));
            }
            let actions = |names: &[String], field: &str| {
                names.iter().try_fold(DataActions::NONE, |all, name| {
                    DataActions::parse(name).map(|a| all.union(a)).ok_or_else(|| {
                        at(format!(
                            "{field}: unknown data action '{name}' (expected *, read, write, delete)"
                        ))
                    })
                })
            };
            let allowed = actions(&role.data_actions, "dataActions")?
                .without(actions(&role.not_data_actions, "notDataActions")?);
            let key = role.name.to_lowercase();
            if by_name.contains_key(&key) {
                return Err(at(format!("duplicate role name '{}'", role.name)));
            }
            by_name.insert(
                key,
                Role {
                    name: role.name,
                    allowed,
                },
            );
        }
        Ok(Self { by_name })
    }

    /// The role called `name`, in any casing.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(&name.to_lowercase())
    }

    /// What holding all of `names` allows: the union of the known roles' actions.
    pub fn allowed<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> DataActions {
        names
            .into_iter()
            .filter_map(|name| self.get(name))
            .fold(DataActions::NONE, |all, role| all.union(role.allowed))
    }

    /// How many roles are defined.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no role is defined.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = r#"{
        "$schema": "../Microsoft.Health.Dicom.Core/Features/Security/roles.schema.json",
        "roles": [
            {"name": "globalReader", "dataActions": ["read"], "notDataActions": [], "scopes": ["/"]},
            {"name": "globalAdmin", "dataActions": ["*"], "notDataActions": [], "scopes": ["/"]},
            {"name": "globalWriter", "dataActions": ["*"], "notDataActions": ["delete"], "scopes": ["/"]}
        ]
    }"#;

    #[test]
    fn the_originals_file_loads_and_not_data_actions_remove() {
        let roles = Roles::parse(ORIGINAL).unwrap();
        assert_eq!(roles.len(), 3);
        assert_eq!(roles.allowed(["globalReader"]), DataActions::READ);
        assert_eq!(roles.allowed(["GLOBALADMIN"]), DataActions::ALL);
        let writer = roles.allowed(["globalWriter"]);
        assert!(writer.contains(DataActions::READ.union(DataActions::WRITE)));
        assert!(!writer.contains(DataActions::DELETE));
        assert_eq!(roles.allowed(["unknown"]), DataActions::NONE);
        assert_eq!(
            roles.allowed(["globalReader", "globalWriter"]),
            DataActions::READ.union(DataActions::WRITE)
        );
    }

    #[test]
    fn bad_files_are_refused_with_where() {
        let role = |body: &str| format!(r#"{{"roles": [{body}]}}"#);
        let cases = [
            (
                role(
                    r#"{"name": "a", "dataActions": ["Read"], "notDataActions": [], "scopes": ["/"]}"#,
                ),
                "unknown data action 'Read'",
            ),
            (
                role(r#"{"name": "a", "dataActions": [], "notDataActions": [], "scopes": ["/x"]}"#),
                "scopes",
            ),
            (
                role(
                    r#"{"name": "a b", "dataActions": [], "notDataActions": [], "scopes": ["/"]}"#,
                ),
                "name 'a b'",
            ),
            (
                role(r#"{"name": "a", "dataActions": [], "scopes": ["/"]}"#),
                "notDataActions",
            ),
            (
                role(
                    r#"{"name": "a", "dataActions": [], "notDataActions": [], "scopes": ["/"], "x": 1}"#,
                ),
                "unknown field",
            ),
            (
                role(
                    r#"{"name": "a", "dataActions": [], "notDataActions": [], "scopes": ["/"]},
                       {"name": "A", "dataActions": [], "notDataActions": [], "scopes": ["/"]}"#,
                ),
                "roles[1]: duplicate role name 'A'",
            ),
            ("{}".to_owned(), "missing field `roles`"),
        ];
        for (text, expected) in cases {
            let error = Roles::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn data_actions_display() {
        assert_eq!(DataActions::ALL.to_string(), "read,write,delete");
        assert_eq!(DataActions::NONE.to_string(), "none");
    }
}
