//! Building a machine: its state, then its kernel threads (kswapd).

use crate::error::VmError;
use crate::machine::{Config, Inner, Machine};

impl Machine {
    /// Builds a machine.
    pub fn new(config: Config) -> Result<Machine, VmError> {
        let inner = Inner::new(config)?;
        if inner.config.kswapd {
            crate::reclaim::start_kswapd(&inner);
        }
        Ok(Machine(inner))
    }
}
