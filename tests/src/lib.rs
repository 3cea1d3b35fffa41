//! # qpon-tests — end-to-end tests across crates and processes
//!
//! Cross-crate scenarios live here (the root manifest is a virtual workspace, so this is a
//! crate of its own rather than Cargo's `tests/` folder). Empty until the crates it
//! composes exist.
#![forbid(unsafe_code)]
