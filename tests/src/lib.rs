//! qpon-tests
