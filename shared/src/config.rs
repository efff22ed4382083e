//! Config files: TOML, unknown keys rejected, every key overridable from the environment.
//!
//! The process environment is captured once in `main` as an [`Env`] and passed down; nothing
//! else reads environment variables. A binary's config is loaded in two steps: [`load`] parses
//! the file, overlays `<PREFIX>__<KEY>__<SUBKEY>=value` variables and deserializes into the
//! binary's raw struct (which uses `deny_unknown_fields`); the binary's `validate()` then turns
//! that into a typed config. This module knows nothing about hub or spoke keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file and the environment it was read with, to read it again (a reload).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Env,
}

/// A snapshot of the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The real environment; called once, from `main`.
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The Valkey URL from `MOSAIC_VALKEY_URL`, else `VALKEY_URL`, else `VALKEY_HOST` with
    /// optional `VALKEY_PORT` (default 6379) and `VALKEY_PASSWORD`.
    pub fn valkey_url(&self) -> Option<String> {
        if let Some(url) = self.get("MOSAIC_VALKEY_URL").or(self.get("VALKEY_URL")) {
            return Some(url.to_owned());
        }
        let host = self.get("VALKEY_HOST")?;
        let port = self.get("VALKEY_PORT").unwrap_or("6379");
        let user = self.get("VALKEY_USERNAME").map(percent_encode);
        Some(
            match (user, self.get("VALKEY_PASSWORD").map(percent_encode)) {
                (user, Some(pw)) => {
                    format!("redis://{}:{pw}@{host}:{port}", user.unwrap_or_default())
                }
                (Some(user), None) => format!("redis://{user}@{host}:{port}"),
                (None, None) => format!("redis://{host}:{port}"),
            },
        )
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a URL's user info.
fn percent_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, USERINFO).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var} cannot override the config: {reason}")]
    Override { var: String, reason: String },
    #[error("config file {path}{overrides}: {message}")]
    Shape {
        path: PathBuf,
        /// Names the environment overrides that were applied, since they may be the culprit.
        overrides: String,
        message: String,
    },
    #[error("config file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Reads `path`, applies `<prefix>__…` overrides from `env` and deserializes into `T`.
///
/// `MOSAIC_SPOKE__TLS__CERT=/x` sets `tls.cert`; a numeric segment indexes an existing array
/// (`…__PROFILES__0__PROGRAM`). A value is read as a TOML value when it parses as one
/// (`5`, `true`, `["a", "b"]`) and as a string otherwise.
pub fn load<T: DeserializeOwned>(path: &Path, prefix: &str, env: &Env) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let var_prefix = format!("{prefix}__");
    let mut applied = Vec::new();
    for (var, value) in &env.0 {
        // An empty value means unset, as everywhere else in Env.
        let Some(key) = var.strip_prefix(&var_prefix).filter(|_| !value.is_empty()) else {
            continue;
        };
        let segments: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        set_path(&mut table, &segments, parse_value(value)).map_err(|reason| {
            ConfigError::Override {
                var: var.clone(),
                reason,
            }
        })?;
        applied.push(var.clone());
    }
    // Without overrides, deserialize the original text so errors point at its lines.
    let result = if applied.is_empty() {
        toml::from_str::<T>(&text)
    } else {
        toml::from_str::<T>(&toml::to_string(&table).expect("a TOML table always serializes"))
    };
    result.map_err(|e| ConfigError::Shape {
        path: path.to_owned(),
        overrides: if applied.is_empty() {
            String::new()
        } else {
            format!(" (with overrides from {})", applied.join(", "))
        },
        message: e.message().to_owned() + &span_hint(&text, e.span(), applied.is_empty()),
    })
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>, exact: bool) -> String {
    match span {
        Some(span) if exact => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        _ => String::new(),
    }
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if first.is_empty() {
        return Err("empty key segment".into());
    }
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let slot = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(slot, rest, value)
}

fn set_in_value(slot: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    match slot {
        toml::Value::Table(t) => set_path(t, path, value),
        toml::Value::Array(items) => {
            let (index, rest) = path.split_first().ok_or("empty key")?;
            let i: usize = index
                .parse()
                .map_err(|_| format!("{index:?} must be an array index"))?;
            let len = items.len();
            let item = items
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of an array of {len}"))?;
            if rest.is_empty() {
                *item = value;
                Ok(())
            } else {
                set_in_value(item, rest, value)
            }
        }
        _ => Err(format!("{:?} is not a table", path[0])),
    }
}

/// A path from a config file, made absolute against the file's directory.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        name: String,
        port: Option<u16>,
        tls: Option<Tls>,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Tls {
        cert: String,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: String,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn env_overrides_nested_keys_and_array_items() {
        let (_d, p) = file("name = \"a\"\n[[items]]\nid = \"x\"\n");
        let env = Env::default()
            .with("T__PORT", "7443")
            .with("T__TLS__CERT", "/etc/c.pem")
            .with("T__ITEMS__0__ID", "y")
            .with("OTHER__NAME", "ignored");
        let raw: Raw = load(&p, "T", &env).unwrap();
        assert_eq!(raw.port, Some(7443));
        assert_eq!(raw.tls.unwrap().cert, "/etc/c.pem");
        assert_eq!(raw.items[0].id, "y");
        assert_eq!(raw.name, "a");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let (_d, p) = file("name = \"a\"\nnmae = \"b\"\n");
        let err = load::<Raw>(&p, "T", &Env::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `nmae`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_keys_from_the_environment_are_rejected_and_named() {
        let (_d, p) = file("name = \"a\"\n");
        let err = load::<Raw>(&p, "T", &Env::default().with("T__COLOUR", "red"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `colour`") && err.contains("T__COLOUR"),
            "{err}"
        );
        let err = load::<Raw>(&p, "T", &Env::default().with("T__NAME__X", "1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("T__NAME__X"), "{err}");
    }

    #[test]
    fn valkey_url_precedence() {
        let env = Env::default()
            .with("VALKEY_HOST", "h")
            .with("VALKEY_PASSWORD", "pw");
        assert_eq!(env.valkey_url().unwrap(), "redis://:pw@h:6379");
        let acl = env
            .clone()
            .with("VALKEY_USERNAME", "mosaic")
            .with("VALKEY_PASSWORD", "p@ss:w/rd")
            .with("VALKEY_PORT", "6380");
        assert_eq!(
            acl.valkey_url().unwrap(),
            "redis://mosaic:p%40ss%3Aw%2Frd@h:6380"
        );
        let user_only = Env::default()
            .with("VALKEY_HOST", "h")
            .with("VALKEY_USERNAME", "u");
        assert_eq!(user_only.valkey_url().unwrap(), "redis://u@h:6379");
        let env = env.with("VALKEY_URL", "redis://v");
        assert_eq!(env.valkey_url().unwrap(), "redis://v");
        let env = env.with("MOSAIC_VALKEY_URL", "unix:///s");
        assert_eq!(env.valkey_url().unwrap(), "unix:///s");
        assert_eq!(Env::default().valkey_url(), None);
    }
}
