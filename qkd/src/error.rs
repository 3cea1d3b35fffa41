//! Errors shared across the crate's pure functions.

/// External data (a file, a message field, a parameter) that cannot be accepted. The
/// `field` names what was wrong so a user can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct InvalidInput {
    /// The offending field, e.g. `mu` or `key.n`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidInput {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}
