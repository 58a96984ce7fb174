//! What a backend promises (docs/reference.md "Store"): judge an [`Ask`] and charge it
//! atomically, answering a [`Decision`] or a [`StoreError`]. Both stores
//! implement [`Store`], and the benches drive them through it.
//!
//! `Limiter` does not dispatch through this trait: it matches on the closed
//! `AnyStore` enum, because the two backends are not used alike. The memory
//! store is called synchronously (`MemoryStore::acquire_now`: no future, no
//! deadline, no circuit, nothing that can fail), while the Redis store gets a
//! deadline, the deny cache and the circuit breaker around it. A trait
//! object would box a future per call, and a generic `Limiter` would spread
//! a type parameter over everything that holds one; the enum costs one
//! branch. A third backend means a variant there and an impl here.

use std::future::Future;

use super::{Ask, Decision, Refunded};

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

    /// Gives back what `charged` (this store's decision for `ask`) charged,
    /// to the same windows and the same slots, atomically, never below zero;
    /// a slot that has left its window gets nothing back.
    fn refund(&self, ask: &Ask<'_>, charged: &Decision) -> impl Future<Output = Result<Refunded, StoreError>> + Send;
}
