//! qpon-kms
