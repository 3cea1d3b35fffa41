//! # qpon-mux — the shared medium
//!
//! Will hold: slot maps (which ONU owns which detector gates, from which frame), the
//! scheduler that recomputes them once per scheduling period, ranging and equalisation
//! delays, and downstream framing with per-ONU AES-128-CTR, key index and key switching.
//! It knows nothing about sockets.
//!
//! Nothing is implemented yet; see the README's features table.
#![forbid(unsafe_code)]
