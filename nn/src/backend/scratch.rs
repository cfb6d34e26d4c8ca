//! One scratch buffer per pool thread: conv packing panels, Winograd tiles, a row of
//! attention weights. A layer job's call on thread `i` locks buffer `i` (never contended: a
//! thread runs one call at a time), so the buffers are allocated once per model, not per layer.

use std::sync::{Mutex, MutexGuard};

/// The per-thread scratch buffers of one model (or trainer lane).
#[derive(Debug)]
pub struct ThreadScratch(Vec<Mutex<Vec<f32>>>);

impl ThreadScratch {
    /// `threads` buffers of `len` floats each.
    pub fn new(threads: usize, len: usize) -> ThreadScratch {
        ThreadScratch((0..threads).map(|_| Mutex::new(vec![0.0; len])).collect())
    }

    /// Thread `thread`'s buffer (a poisoned lock still hands it out: the buffer holds no
    /// state between calls).
    pub fn lock(&self, thread: usize) -> MutexGuard<'_, Vec<f32>> {
        self.0[thread].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Floats held by all buffers together.
    pub fn floats(&self) -> usize {
        (0..self.0.len()).map(|i| self.lock(i).len()).sum()
    }
}
