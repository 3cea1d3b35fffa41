//! qpon-sensor-auth
