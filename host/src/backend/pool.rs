//! A persistent pool of `threads − 1` workers plus the calling thread.
//!
//! [`Pool::broadcast`] runs one closure on every thread (index 0 is the caller) and returns when
//! all have finished; [`Pool::split`] partitions an output buffer by [`part`] and hands each
//! thread its own disjoint piece. Workers spin briefly before sleeping on a condition variable,
//! because a U-Net forward issues hundreds of short layers back to back and a futex wake-up per
//! layer would cost more than a small layer itself.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tweedie_kernels::KernelError;

/// How long an idle thread spins before it sleeps (covers the gap between two layers).
const SPIN: Duration = Duration::from_micros(200);

/// The `i`-th of `parts` contiguous ranges of `0..units`, cut at multiples of `granule`: the
/// fixed split rule of every layer (granule = the kernel's natural block, e.g. the conv
/// microkernel's MR rows). Consecutive parts tile `0..units` exactly.
pub fn part(units: usize, parts: usize, granule: usize, i: usize) -> Range<usize> {
    let granule = granule.max(1);
    let blocks = units.div_ceil(granule);
    let parts = parts.max(1);
    let cut = |j: usize| (blocks * j / parts * granule).min(units);
    cut(i)..cut(i + 1)
}

/// The job being broadcast, its lifetime erased (see [`Pool::broadcast`] for why it is sound).
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and it is only dereferenced while `broadcast` keeps it alive.
unsafe impl Send for JobPtr {}

struct Shared {
    job: Mutex<Option<JobPtr>>,
    /// Bumped (under `lock`) for every broadcast.
    generation: AtomicU64,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    work: Condvar,
    done: Condvar,
}

/// `threads` threads (the caller and `threads − 1` workers) that run layers together.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held during a broadcast: one job at a time.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// Starts `threads − 1` workers (`threads` is at least 1).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tweedie-worker-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool {
            threads,
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Number of threads, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` once for every thread index `i` in `0..threads` (0 on the calling thread)
    /// and returns when every call has returned. Do not call `broadcast` from inside `f`.
    pub fn broadcast(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. Workers dereference the pointer between the
        // generation bump below and their decrement of `pending`, and this function does not
        // return (nor unwind past the wait: `f(0)` runs under catch_unwind) before `pending`
        // is 0, so `f` outlives every use.
        let job = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f,
            )
        });
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.pending.store(self.threads - 1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.generation.fetch_add(1, Ordering::SeqCst);
            s.work.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        wait_until(s, &s.done, || s.pending.load(Ordering::SeqCst) == 0);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked");
        }
    }

    /// Splits `out` — `units` equal rows (channels, groups, heads) — by [`part`] into one
    /// contiguous piece per thread and calls `f(thread, rows, piece)` for every non-empty piece.
    /// Returns the first error any call returned.
    pub fn split<F>(
        &self,
        out: &mut [f32],
        units: usize,
        granule: usize,
        f: F,
    ) -> Result<(), KernelError>
    where
        F: Fn(usize, Range<usize>, &mut [f32]) -> Result<(), KernelError> + Sync,
    {
        if units == 0 || !out.len().is_multiple_of(units) {
            return Err(KernelError::Shape(
                "split: output is not a whole number of rows",
            ));
        }
        let row = out.len() / units;
        if self.threads == 1 {
            return f(0, 0..units, out);
        }
        let base = SendPtr(out.as_mut_ptr());
        let error = Mutex::new(None);
        self.broadcast(&|i| {
            let r = part(units, self.threads, granule, i);
            if r.is_empty() {
                return;
            }
            // SAFETY: the parts of a partition are disjoint ranges inside 0..units, so these
            // slices are disjoint pieces of `out`, which stays mutably borrowed (and unused
            // elsewhere) until `broadcast` has returned.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(base.at(r.start * row), r.len() * row) };
            if let Err(e) = f(i, r, piece) {
                error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
        match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.shutdown.store(true, Ordering::SeqCst);
            s.work.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw base pointer that may cross threads (the pieces derived from it are disjoint).
struct SendPtr(*mut f32);

// SAFETY: used only by `Pool::split`, which derives disjoint pieces from it.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element pointer at `offset` (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Spins for up to [`SPIN`], then sleeps on `cv` until `ready()` (checked under `s.lock`, which
/// every notifier takes, so no wake-up is lost).
fn wait_until(s: &Shared, cv: &Condvar, ready: impl Fn() -> bool) {
    let start = Instant::now();
    let mut n = 0u32;
    while !ready() {
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) && start.elapsed() > SPIN {
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            while !ready() {
                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            return;
        }
        std::hint::spin_loop();
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        wait_until(s, &s.work, || {
            s.generation.load(Ordering::SeqCst) != seen || s.shutdown.load(Ordering::SeqCst)
        });
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        seen = s.generation.load(Ordering::SeqCst);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(f)) = job {
            // SAFETY: see `Pool::broadcast`: the job is alive until `pending` reaches 0.
            let f = unsafe { &*f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        if s.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_range_at_granule_boundaries() {
        for (units, parts, granule) in [(128, 2, 6), (6, 2, 6), (7, 3, 1), (32, 5, 1), (0, 2, 6)] {
            let mut next = 0;
            for i in 0..parts {
                let r = part(units, parts, granule, i);
                assert_eq!(r.start, next);
                assert!(r.start == units || r.start.is_multiple_of(granule));
                next = r.end;
            }
            assert_eq!(next, units);
        }
        assert_eq!(part(128, 2, 6, 0), 0..66);
    }

    #[test]
    fn split_hands_every_row_to_exactly_one_thread() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            let mut out = vec![0.0f32; 37 * 3];
            for _ in 0..50 {
                pool.split(&mut out, 37, 4, |_, rows, piece| {
                    assert_eq!(piece.len(), rows.len() * 3);
                    for (j, v) in piece.iter_mut().enumerate() {
                        *v += (rows.start * 3 + j) as f32;
                    }
                    Ok(())
                })
                .unwrap();
            }
            for (j, v) in out.iter().enumerate() {
                assert_eq!(*v, 50.0 * j as f32, "threads {threads}");
            }
        }
    }

    #[test]
    fn errors_and_panics_reach_the_caller() {
        let pool = Pool::new(2);
        let mut out = vec![0.0f32; 8];
        let e = pool.split(&mut out, 8, 1, |i, _, _| {
            if i == 1 {
                Err(KernelError::Shape("x"))
            } else {
                Ok(())
            }
        });
        assert_eq!(e, Err(KernelError::Shape("x")));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.broadcast(&|i| assert!(i != 1, "boom"))
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.broadcast(&|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
