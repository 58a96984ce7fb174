//! STUB (replaced by the pure-steps branch).
