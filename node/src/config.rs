//! Configuration files: TOML, every key optional with a documented default, unknown keys
//! refused, and errors that name the field (`invalid `session.block_bits`: …`).

use serde::de::DeserializeOwned;

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// `invalid `field`: why`.
    pub fn field(field: &str, why: impl std::fmt::Display) -> Self {
        ConfigError(format!("invalid `{field}`: {why}"))
    }
}

/// Parses TOML into `T`, naming the offending field on error.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError(format!("invalid TOML: {e}")))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ConfigError(format!("invalid configuration: {}", inner.message()))
        } else {
            ConfigError::field(&path, inner.message())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_toml::<Outer>("[inner]\nn = -1\n").unwrap_err();
        assert!(e.0.contains("`inner.n`"), "{e}");
        let e = parse_toml::<Outer>("[inner]\nn = 1\nm = 2\n").unwrap_err();
        assert!(e.0.contains('m'), "{e}");
        let e = parse_toml::<Outer>("[inner\n").unwrap_err();
        assert!(e.0.contains("TOML"), "{e}");
    }
}
