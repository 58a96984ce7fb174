//! The one seam between the shared decision logic and a backend (SPEC §4).

use std::future::Future;

use super::{Ask, Decision};

/// Why a store could not answer. Converted to fail-open/fail-closed by `Limiter`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store call timed out")]
    Timeout,
    #[error("store circuit is open after repeated failures")]
    CircuitOpen,
    #[error("store error: {0}")]
    Backend(String),
}

/// A backend that checks and consumes a call's cost from the account and
/// endpoint windows of one tenant, atomically: both or neither.
pub trait Store: Send + Sync + 'static {
    /// Judges `ask` and, if every window fits `ask.cost`, charges all of them.
    /// A cost of 0 reads the windows without changing anything.
    fn acquire(&self, ask: &Ask<'_>) -> impl Future<Output = Result<Decision, StoreError>> + Send;
}
