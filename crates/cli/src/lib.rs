//! The library half of the `mmnotify` command: the tools its tests call directly.
//!
//! The binary (`src/main.rs`) is the command line over these and its other tools; a test that
//! needs a tool's Rust API (`tests/race_replace.rs`) links this library instead of running the
//! binary.

pub mod race_replace;
pub mod sys;
