//! qpon-olt
