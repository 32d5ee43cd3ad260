//! Scenario files for the simulated system: a machine, processes and their mappings, the
//! drivers attached to them, a sequence of operations (with concurrent threads), pressure and
//! OOM events, and the expected outcome — validator reports, hung tasks, coherence
//! violations, counters that must or must not appear. `mmnotify run` runs them, the tour
//! runs the seeds from them, and [`torture`] drives the same system at random.
//!
//! ```
//! let text = r#"
//! name = "dontneed"
//! [machine]
//! frames = 64
//! [[process]]
//! name = "p"
//! [[process.mapping]]
//! name = "a"
//! pages = 4
//! populate = true
//! [[step]]
//! op = "madvise"
//! at = "a"
//! advice = "dontneed"
//! [[expect]]
//! must_not = "report"
//! "#;
//! let loaded = scenario::load_str("doc.toml", text).unwrap();
//! let outcome = scenario::run(&loaded, &scenario::RunOptions::default());
//! assert!(outcome.passed, "{outcome}");
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod builtin;
pub mod expect;
pub mod load;
pub mod outcome;
pub mod rng;
pub mod runner;
pub mod schema;
pub mod torture;
pub mod trace;
pub mod validate;
mod world;

pub use load::{load_file, load_str, ErrorClass, LoadError, Loaded};
pub use outcome::Outcome;
pub use runner::{run, RunOptions};
pub use trace::{TraceEvent, TraceSink};

/// Loads and runs one scenario file (the tour's entry point): the outcome, or why the file
/// could not be loaded.
pub fn run_file(path: &std::path::Path, opts: &RunOptions) -> Result<Outcome, LoadError> {
    load_file(path).map(|l| run(&l, opts))
}
