//! placeholder, being written
pub mod interval_tree;
