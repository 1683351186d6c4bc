//! The global memory budget (`limits.max_buffered_bytes`, DESIGN §5): bytes read from clients
//! and not yet taken by the sink, all connections together. It is enforced by not reading: a
//! connection reserves its share before it reads, and gives it back once the sink's queue has
//! taken what it read, so that a stalled journal costs kernel socket buffers, not daemon memory.

use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::Semaphore;

/// Permits are KiB: a `Semaphore` counts at most `usize::MAX >> 3` of them.
const UNIT: usize = 1024;

#[derive(Debug)]
pub struct Budget {
    permits: Semaphore,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The limit in force, in units.
    limit: usize,
    /// Units still to be withdrawn after the limit was lowered while they were in use.
    debt: usize,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    units: usize,
}

impl Budget {
    pub fn new(bytes: u64) -> Arc<Self> {
        let limit = units(bytes);
        Arc::new(Budget {
            permits: Semaphore::new(limit),
            state: Mutex::new(State { limit, debt: 0 }),
        })
    }

    /// Waits until `bytes` (at most the whole budget) are free and takes them; first come,
    /// first served. `limit` is the configured budget, applied here when a reload changed it.
    pub async fn reserve(self: &Arc<Self>, bytes: usize, limit: u64) -> Reservation {
        self.resize(units(limit));
        let want = bytes.div_ceil(UNIT).clamp(1, self.limit()) as u32;
        let permit = self
            .permits
            .acquire_many(want)
            .await
            .expect("the budget's semaphore is never closed");
        permit.forget();
        Reservation {
            budget: self.clone(),
            units: want as usize,
        }
    }

    fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit
    }

    /// Applies a new limit: more room at once, less as reservations are given back.
    fn resize(&self, limit: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if limit == state.limit {
            return;
        }
        if limit > state.limit {
            let mut more = limit - state.limit;
            let paid = more.min(state.debt);
            state.debt -= paid;
            more -= paid;
            self.permits.add_permits(more);
        } else {
            let less = state.limit - limit;
            let taken = self.permits.forget_permits(less);
            state.debt += less - taken;
        }
        state.limit = limit;
    }

    fn give_back(&self, units: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let paid = units.min(state.debt);
        state.debt -= paid;
        self.permits.add_permits(units - paid);
    }

    /// Bytes free now (for tests and figures).
    pub fn available(&self) -> u64 {
        (self.permits.available_permits() * UNIT) as u64
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.units);
    }
}

fn units(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(UNIT as u64))
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_room_first_come_first_served() {
        let budget = Budget::new(100 * 1024);
        let a = budget.reserve(60 * 1024, 100 * 1024).await;
        let b = budget.clone();
        let mut waiting = tokio::spawn(async move { b.reserve(60 * 1024, 100 * 1024).await });
        tokio::time::timeout(Duration::from_millis(50), &mut waiting)
            .await
            .expect_err("no room yet");
        drop(a);
        let b = waiting.await.unwrap();
        assert_eq!(budget.available(), 40 * 1024);
        drop(b);
        assert_eq!(budget.available(), 100 * 1024);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_budget_takes_all_of_it() {
        let budget = Budget::new(64 * 1024);
        let r = budget.reserve(1 << 20, 64 * 1024).await;
        assert_eq!(budget.available(), 0);
        drop(r);
        assert_eq!(budget.available(), 64 * 1024);
    }

    #[tokio::test]
    async fn a_lowered_limit_takes_effect_as_reservations_return() {
        let budget = Budget::new(100 * 1024);
        let r = budget.reserve(80 * 1024, 100 * 1024).await;
        // Lowered to 50 KiB while 80 are in use: 20 free are withdrawn now, 30 on return.
        let small = budget.reserve(1, 50 * 1024);
        let mut small = Box::pin(small);
        tokio::time::timeout(Duration::from_millis(50), &mut small)
            .await
            .expect_err("over the new limit");
        drop(r);
        let s = small.await;
        assert_eq!(budget.available(), 49 * 1024);
        drop(s);
        assert_eq!(budget.available(), 50 * 1024);
        // Raised again.
        drop(budget.reserve(1, 200 * 1024).await);
        assert_eq!(budget.available(), 200 * 1024);
    }
}
