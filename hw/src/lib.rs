//! qpon-hw
