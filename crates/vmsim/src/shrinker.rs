//! Shrinkers: caches outside the page cache that give memory back under pressure
//! (`struct shrinker`, `mm/shrinker.c`).

/// A cache that can give memory back under pressure (`struct shrinker`).
pub trait Shrinker: Send + Sync {
    /// A name for reports.
    fn name(&self) -> &str;
    /// How many objects could be freed (`count_objects`).
    fn count(&self) -> usize;
    /// Frees up to `n` objects; returns how many frames that gave back (`scan_objects`). Called
    /// in reclaim context: must not allocate with a blocking GFP.
    fn scan(&self, n: usize) -> usize;
}
