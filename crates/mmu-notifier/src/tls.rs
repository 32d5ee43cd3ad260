//! Which address spaces this thread is currently dispatching callbacks for.
//!
//! A blocking call that waits for callbacks to finish (unregister, interval remove, the
//! `read_begin` wait, the first interval insert) would wait for itself when made from inside a
//! callback — or while this thread holds an open invalidation — of the same address space. The
//! kernel only forbids that in comments; here it is detected and reported instead of hanging.
//!
//! Every dispatch holds a read section of the address space's grace-period domain, and the
//! domain's per-thread slots already say which domains this thread reads
//! ([`srcu::this_thread_reads`]); a [`Mark`] is only for the one dispatch that runs without a
//! read section (the teardown invalidation of the interval tree).

use std::cell::RefCell;

use crate::primitive::thread_local;
use crate::srcu;

#[cfg(not(loom))]
thread_local! {
    static ACTIVE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

// The model checker's `thread_local!` does not take `const` initialisers.
#[cfg(loom)]
thread_local! {
    #[allow(clippy::missing_const_for_thread_local)]
    static ACTIVE: RefCell<Vec<u64>> = RefCell::new(Vec::new());
}

/// This thread is inside a dispatch (or holds an open invalidation) of mm `id` until dropped.
/// Not `Send`: it must be dropped on the thread that made it.
pub(crate) struct Mark {
    id: u64,
    _not_send: std::marker::PhantomData<*const ()>,
}

pub(crate) fn enter(id: u64) -> Mark {
    ACTIVE.with(|a| a.borrow_mut().push(id));
    Mark {
        id,
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        let id = self.id;
        // `try_with`-like tolerance is not needed: marks never outlive their thread's locals
        // because they are not `Send` and are dropped before the thread exits.
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            // Marks are nearly always dropped in reverse order: pop without searching.
            if a.last() == Some(&id) {
                a.pop();
            } else if let Some(pos) = a.iter().rposition(|&x| x == id) {
                a.remove(pos);
            }
        });
    }
}

/// Whether this thread is inside a dispatch (or an open invalidation) of mm `id`: it holds a
/// read section of the mm's domain, or a mark.
pub(crate) fn inside(id: u64) -> bool {
    srcu::this_thread_reads(id) || ACTIVE.with(|a| a.borrow().contains(&id))
}
