//! Hooks for the loom model tests: the real chain-cache protocol on a private validator.

use crate::domain::Domain;

/// A private chain cache plus graph, with the production lookup/validate/publish protocol.
pub struct ChainModel(Domain);

impl ChainModel {
    /// A model with `capacity` chain slots.
    pub fn new(capacity: usize) -> Self {
        Self(Domain::new(capacity, false))
    }

    /// Runs the steady-state lookup and, on a miss, `validate` under the graph lock followed by
    /// publication. Returns whether `validate` ran.
    pub fn lookup_or_validate(&self, key: u64, validate: impl FnOnce()) -> bool {
        self.0
            .lookup_or_validate(key, |_g| {
                validate();
                Some(())
            })
            .is_some()
    }
}
