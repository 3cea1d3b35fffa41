//! qpon-onu
