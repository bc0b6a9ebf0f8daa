//! Configuration loading: a TOML file plus environment overrides, then validation that names the
//! offending key. `FLOWLENS_<STAGE>__KAFKA__BROKERS=...` overrides `kafka.brokers`.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A configuration problem, always naming the key (dotted path) that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// Builds the error for one bad key.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "kafka.brokers",
    "collector.interfaces",
    "collector.dns_ports",
    "collector.http_ports",
];

/// Semantic checks run after deserialization (ranges, non-empty lists, consistent settings).
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from an optional TOML file and from environment variables with `env_prefix`
/// (nested keys separated by `__`), then validates it.
pub fn load_config<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                message: "no such file".into(),
            });
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    // Values stay text (no type guessing: a password "0123" stays "0123"); serde converts numbers
    // and booleans. List keys are split on commas here.
    builder = builder.add_source(
        config::Environment::with_prefix(env_prefix)
            .prefix_separator("__")
            .separator("__"),
    );
    let env_start = format!("{env_prefix}__");
    for (name, value) in std::env::vars() {
        let Some(rest) = name.strip_prefix(&env_start) else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<String> = value
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            builder = builder
                .set_override(key.as_str(), items)
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
    }
    let raw = builder
        .build()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    let parsed: T = raw
        .try_deserialize()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    parsed.validate()?;
    Ok(parsed)
}

/// A configuration value that is never shown: `Debug` prints `<redacted>` (or `""` when empty).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it (a client's credentials).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// The secret held by the file `path` (a mounted Kubernetes secret, say) named by `key`;
/// trailing newlines are not part of it.
pub fn read_secret_file(key: &str, path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read `{path}`: {e}")))?;
    Ok(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// For a key naming a file that must exist when set (certificates, keys, CA bundles).
pub fn check_file(key: &str, path: &str) -> Result<(), ConfigError> {
    if !path.is_empty() && !Path::new(path).is_file() {
        return Err(ConfigError::invalid(
            key,
            format!("`{path}` is not a readable file"),
        ));
    }
    Ok(())
}

/// Checks that a duration-like number of milliseconds lies in `[min, max]`.
pub fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is out of range [{min}, {max}]"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u64,
        #[serde(default)]
        enabled: bool,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            check_range("count", self.count, 0, 10)
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn file_values_are_read_and_validated() {
        let f = write("name = \"a\"\ncount = 3\n");
        let s: Sample = load_config(Some(f.path()), "FLOWLENS_TEST_A").unwrap();
        assert_eq!((s.name.as_str(), s.count), ("a", 3));

        let f = write("name = \"a\"\ncount = 11\n");
        let err = load_config::<Sample>(Some(f.path()), "FLOWLENS_TEST_B").unwrap_err();
        assert!(err.to_string().contains("`count`"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let f = write("name = \"a\"\ncuont = 3\n");
        let err = load_config::<Sample>(Some(f.path()), "FLOWLENS_TEST_C").unwrap_err();
        assert!(err.to_string().contains("cuont"), "{err}");

        let f = write("name = \"a\"\ncount = \"many\"\n");
        let err = load_config::<Sample>(Some(f.path()), "FLOWLENS_TEST_D").unwrap_err();
        assert!(err.to_string().contains("count"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let f = write("name = \"a\"\n");
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("FLOWLENS_TEST_E__NAME", "from-env") };
        let s: Sample = load_config(Some(f.path()), "FLOWLENS_TEST_E").unwrap();
        assert_eq!(s.name, "from-env");
    }

    #[test]
    fn environment_values_keep_their_text_and_still_fill_numbers() {
        let f = write("name = \"a\"\n");
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("FLOWLENS_TEST_G__NAME", "0123");
            std::env::set_var("FLOWLENS_TEST_G__COUNT", "7");
            std::env::set_var("FLOWLENS_TEST_G__ENABLED", "true");
        }
        let s: Sample = load_config(Some(f.path()), "FLOWLENS_TEST_G").unwrap();
        assert_eq!((s.name.as_str(), s.count, s.enabled), ("0123", 7, true));
    }

    #[test]
    fn secrets_are_never_shown_and_files_lose_their_newline() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        let f = write("hunter2\n");
        let read = read_secret_file("x.password_file", f.path().to_str().unwrap()).unwrap();
        assert_eq!(read.expose(), "hunter2");
        let e = read_secret_file("x.password_file", "/nonexistent/pw").unwrap_err();
        assert!(e.to_string().contains("`x.password_file`"), "{e}");
        assert!(check_file("x.ca", "/nonexistent/ca.pem").is_err());
        assert!(check_file("x.ca", "").is_ok());
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_config::<Sample>(Some(Path::new("/nonexistent/x.toml")), "FLOWLENS_TEST_F")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"), "{err}");
    }
}
