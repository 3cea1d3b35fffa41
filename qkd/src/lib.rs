//! # qpon-qkd — sans-IO decoy-state BB84 key distillation
//!
//! Everything between one OLT and one ONU that turns detections into identical secret key
//! blocks: the [records] the sessions consume, packed [bit blocks](bits), [sifting](sift),
//! the decoy-state [finite-key bound](finite_key) of Lim et al. 2014, [verification]
//! hashing, Toeplitz [privacy amplification](pa), and the Wegman–Carter [MAC](mac).
//!
//! The crate does no I/O, spawns no tasks and reads no clock: every input (records,
//! messages, the current time, an RNG) is passed in, so the same code runs on hardware,
//! in the simulator and in deterministic tests.
//!
//! Conventions: key basis **Z**, test basis **X**; bits are packed LSB-first in `u64`
//! words (see [`bits`]).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bits;
pub mod error;
pub mod finite_key;
pub mod mac;
pub mod pa;
pub mod reconcile;
pub mod records;
pub mod rng;
pub mod secret;
pub mod session;
pub mod sift;
pub mod time;
pub mod verification;

// The public interface is:
pub use bits::BitBlock;
pub use error::InvalidInput;
pub use records::{Basis, DetectionFlags, DetectionRecord, Intensity, PulseRecord};
pub use secret::SecretBytes;
