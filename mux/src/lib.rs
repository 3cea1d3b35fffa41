//! qpon-mux
