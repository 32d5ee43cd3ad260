//! `--trace`: a recording list subscriber on every process of a scenario, handing each
//! notifier event to a sink as it happens.

use std::fmt;
use std::sync::Arc;

use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Range, WouldBlock};

/// One notifier event seen by the tracing subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The process whose address space it is.
    pub process: String,
    /// The thread that made the call.
    pub thread: String,
    /// `invalidate_range_start`, `invalidate_range_end` or `release`.
    pub callback: &'static str,
    /// The event (`MMU_NOTIFY_UNMAP`, …); empty for `release`.
    pub event: &'static str,
    /// The range (empty for `release`).
    pub start: u64,
    /// End of the range.
    pub end: u64,
    /// Whether the caller may block.
    pub blockable: bool,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.callback == "release" {
            return write!(f, "[{}] {}: release", self.thread, self.process);
        }
        write!(
            f,
            "[{}] {}: {} {} {:#x}..{:#x}{}",
            self.thread,
            self.process,
            self.callback,
            self.event,
            self.start,
            self.end,
            if self.blockable {
                ""
            } else {
                " (non-blockable)"
            }
        )
    }
}

/// Where trace events go.
pub type TraceSink = Arc<dyn Fn(&TraceEvent) + Send + Sync>;

/// The tracing subscriber: never refuses, keeps nothing, takes no lock of the modelled kernel.
pub(crate) struct Tracer {
    pub(crate) process: String,
    pub(crate) sink: TraceSink,
}

fn thread_name() -> String {
    let t = std::thread::current();
    t.name()
        .map_or_else(|| format!("{:?}", t.id()), str::to_owned)
}

impl Tracer {
    fn emit(&self, callback: &'static str, r: Option<&Range>) {
        let ev = TraceEvent {
            process: self.process.clone(),
            thread: thread_name(),
            callback,
            event: r.map_or("", |r| r.event().kernel_name()),
            start: r.map_or(0, Range::start),
            end: r.map_or(0, Range::end),
            blockable: r.is_none_or(Range::is_blockable),
        };
        (self.sink)(&ev);
    }
}

impl MmuNotifierOps for Tracer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::RELEASE
            | Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
    }
    fn release(&self, _mm: &Mm) {
        self.emit("release", None);
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        self.emit("invalidate_range_start", Some(range));
        Ok(())
    }
    fn invalidate_range_end(&self, range: &Range) {
        self.emit("invalidate_range_end", Some(range));
    }
}
