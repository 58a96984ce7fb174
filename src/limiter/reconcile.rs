//! The helpdesk's own count, charged to a tenant's account window (README,
//! "Upstream-aware budgets"). The helpdesk's budget is spent by every
//! integration on the account, not only by the calls that pass here; when it
//! reports less left than the gateway's account window, or refuses with a
//! 429, [`Limiter::settle`] charges the difference through the store, so
//! every replica refuses the calls the helpdesk would refuse, with a
//! `Retry-After` the window computes as for any other refusal.
//!
//! Only ever more: the gateway's own budget stays the upper bound, and
//! nothing is given back on the helpdesk's word. The arithmetic is
//! `window::settle` (memory) and `reconcile.lua` (Redis).

use tokio::time::Instant;

use super::{AnyStore, Ask, Limiter};

/// What the helpdesk said about a tenant's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// It has this many credits left (`X-RateLimit-Remaining`): the account
    /// window is charged, at this instant, until it has no more left.
    Left(u32),
    /// It refused (429) for this many milliseconds (`Retry-After`): the
    /// account window is filled until then.
    ClosedFor { ms: u64 },
}

impl Limiter {
    /// Charges what `how` says to `ask`'s account window (`ask.cost` is not
    /// used): one store call. The credits charged, or `None` when the store
    /// could not (logged; nothing else changes).
    pub async fn settle(&self, ask: &Ask<'_>, how: Settle) -> Option<u32> {
        match &self.store {
            AnyStore::Memory(m) => Some(m.settle_now(ask, how)),
            AnyStore::Redis(r) => {
                let start = Instant::now();
                let mut permit = self.circuit.permit(start)?;
                match r.settle_by(ask, how, start + self.store_timeout).await {
                    Ok(n) => {
                        permit.succeeded();
                        Some(n)
                    }
                    Err(e) => {
                        permit.failed(Instant::now(), &e);
                        tracing::warn!(tenant = ask.tenant, error = %e, "rate-limit store failed; the helpdesk's count was not charged");
                        None
                    }
                }
            }
        }
    }
}
