//! qpon-sim
