//! kswapd's handle (`pgdat->kswapd`, `kswapd_wait`): the wake and stop flags it sleeps on and
//! its thread. The thread's body, which reclaims, is in `reclaim.rs`.

use std::sync::Arc;

use crate::primitive::{thread, Condvar, Mutex};

#[derive(Default)]
pub(crate) struct KswapdState {
    /// `(woken, stopping)`.
    flags: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl KswapdState {
    /// Sleeps until woken; returns false when told to stop.
    pub(crate) fn wait(&self) -> bool {
        let mut s = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        while !s.0 && !s.1 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 = false;
        !s.1
    }
}

/// kswapd's handle: its wake/stop state (shared with the thread, which holds only a weak
/// reference to the machine while it sleeps) and the thread.
#[derive(Default)]
pub(crate) struct KswapdHandle {
    pub(crate) state: Arc<KswapdState>,
    pub(crate) thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl KswapdHandle {
    /// `wakeup_kswapd`.
    pub(crate) fn wake(&self) {
        let mut s = self.state.flags.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        self.state.cv.notify_one();
    }

    pub(crate) fn stop(&self) {
        {
            let mut s = self.state.flags.lock().unwrap_or_else(|e| e.into_inner());
            s.1 = true;
            self.state.cv.notify_one();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            // The machine's last handle may be dropped by kswapd itself: never join oneself.
            if h.thread().id() != thread::current().id() {
                let _ = h.join();
            }
        }
    }
}
