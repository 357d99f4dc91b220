//! Tessera's configuration: the original server's keys, loaded the way ASP.NET Core loads them.
//!
//! Sources, later winning (contract §2): built-in defaults → `appsettings.json` (current
//! directory, or `--config PATH`) → environment variables (`DicomServer__Services__BlobMigration__FormatType`)
//! → command-line flags. Keys are case-insensitive. Every value is parsed into [`Settings`] at
//! start-up; a bad one stops start-up with a [`ConfigError`] that names its key and source.
//!
//! ```
//! use tessera_config::{RawConfig, Origin, Settings};
//! use tessera_core::FormatType;
//!
//! let mut raw = RawConfig::new();
//! raw.add_json(r#"{"DicomServer": {"Services": {"BlobMigration": {"FormatType": "Old"}}}}"#, Origin::Default)?;
//! raw.add_environment([("DicomServer__Services__BlobMigration__FormatType".to_owned(), "Dual".to_owned())]);
//! let (settings, _) = Settings::bind(&raw)?;
//! assert_eq!(settings.blob_migration.format_type, FormatType::Dual);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod keys;
mod settings;
mod sources;
mod values;

use std::path::{Path, PathBuf};

pub use settings::{
    Batching, BlobMigrationSettings, CorsSettings, DeletedInstanceCleanupSettings, EffectiveValue,
    FunctionsSettings, LifecycleSettings, PublicUrlSettings, SecuritySettings, Settings,
    TesseraSettings,
};
pub use sources::{Origin, RawConfig, RawValue};
pub use values::{format_timespan, parse_timespan};

/// Why configuration could not be loaded. Each message is one line naming the key or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("invalid value '{value}' for {key} (from {origin}): {reason}")]
    InvalidValue {
        /// The key as the source spelled it.
        key: String,
        /// The offending value (masked for secrets).
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What was expected.
        reason: String,
    },
    /// A setting another setting requires.
    #[error("{key} must be set because {because}")]
    Missing {
        /// The missing key.
        key: &'static str,
        /// The setting that requires it.
        because: String,
    },
    /// A settings file that cannot be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A settings file that is not JSON.
    #[error("configuration file {} is not valid JSON: {reason}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

impl ConfigError {
    /// Hides the value of a secret setting in the error message.
    fn masked(self) -> Self {
        match self {
            Self::InvalidValue {
                key,
                origin,
                reason,
                value,
            } => Self::InvalidValue {
                value: tessera_blob::azure::mask_connection_string(&value),
                key,
                origin,
                reason,
            },
            other => other,
        }
    }
}

/// The loaded configuration: the typed settings and where each came from.
#[derive(Clone, Debug)]
pub struct Config {
    /// The checked settings.
    pub settings: Settings,
    /// Every setting's effective value and source, for `tessera config`.
    pub effective: Vec<EffectiveValue>,
}

/// What to load configuration from; [`Config::load`] reads it in precedence order.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// An explicit settings file (`--config`), which must exist. Without it, `appsettings.json`
    /// in the current directory is read if present.
    pub config_file: Option<PathBuf>,
    /// Environment variables (the process environment in production, a fixed list in tests).
    pub environment: Vec<(String, String)>,
    /// Command-line overrides: (key, value, flag name).
    pub flags: Vec<(&'static str, String, &'static str)>,
}

impl Config {
    /// Loads defaults, the settings file, the environment and the flags, and checks them all.
    pub fn load(options: &LoadOptions) -> Result<Self, ConfigError> {
        let mut raw = RawConfig::new();
        match &options.config_file {
            Some(path) => raw.add_json_file(path)?,
            None => {
                let default = Path::new("appsettings.json");
                if default.is_file() {
                    raw.add_json_file(default)?;
                }
            }
        }
        raw.add_environment(options.environment.iter().cloned());
        for (key, value, flag) in &options.flags {
            raw.set(key, value.clone(), Origin::Flag((*flag).to_owned()));
        }
        let (settings, effective) = Settings::bind(&raw)?;
        Ok(Self {
            settings,
            effective,
        })
    }

    /// The effective configuration as `Key = value  (source)` lines, secrets masked.
    pub fn describe(&self) -> String {
        let width = self
            .effective
            .iter()
            .map(|e| e.key.len())
            .max()
            .unwrap_or(0);
        self.effective
            .iter()
            .map(|e| format!("{:width$} = {}  ({})\n", e.key, e.value, e.origin))
            .collect()
    }
}
