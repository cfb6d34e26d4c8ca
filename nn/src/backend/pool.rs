//! A persistent pool of `threads − 1` workers plus the calling thread.
//!
//! [`Pool::run`] runs the chunks of a job on whichever threads claim them (the caller
//! included) and returns when all have finished; [`Pool::split`] partitions an output buffer
//! by [`part`] into one chunk per thread, each a disjoint piece. Workers spin briefly before sleeping on a condition variable,
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

/// The job being run, its lifetime erased (see [`Pool::run`] for why it is sound).
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and it is only dereferenced by threads registered in
// `State::active`, which `Pool::run` waits for before returning.
unsafe impl Send for JobPtr {}

/// What workers see, changed only under `Shared::state`.
struct State {
    /// The current job and its chunk count; `None` once the caller has closed it.
    job: Option<(JobPtr, usize)>,
    generation: u64,
    /// Workers running chunks of the current job.
    active: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Mirrors `State::generation` so idle workers can spin without the lock.
    generation: AtomicU64,
    /// Mirrors `State::active` so the caller can spin without the lock.
    active: AtomicUsize,
    /// Next unclaimed chunk of the current job.
    next: AtomicUsize,
    /// A chunk panicked on a worker.
    panicked: AtomicBool,
    work: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs chunks until none is left.
    fn drain(&self, f: &(dyn Fn(usize, usize) + Sync), chunks: usize, thread: usize) {
        loop {
            let j = self.next.fetch_add(1, Ordering::SeqCst);
            if j >= chunks {
                return;
            }
            f(thread, j);
        }
    }
}

/// `threads` threads (the caller and `threads − 1` workers) that run layers together.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held during a run: one job at a time.
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
            state: Mutex::new(State {
                job: None,
                generation: 0,
                active: 0,
                shutdown: false,
            }),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
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

    /// Calls `f(thread, chunk)` exactly once for every chunk in `0..chunks` and returns when
    /// all calls have returned. Chunks are claimed dynamically (the caller, thread 0, claims
    /// too), so a worker the OS has not scheduled yet does not hold up the layer; `thread` is
    /// the index (0..threads) of the thread running the call, for per-thread scratch. Do not
    /// call `run` from inside `f`.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.threads == 1 || chunks <= 1 {
            (0..chunks).for_each(|j| f(0, j));
            return;
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. A worker dereferences the pointer only after
        // registering in `active` while the job is published, and this function withdraws the
        // job and waits for `active == 0` before returning (the caller's own chunks run under
        // catch_unwind, so it cannot unwind past the wait either): `f` outlives every use.
        let job = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize, usize) + Sync + '_),
                *const (dyn Fn(usize, usize) + Sync),
            >(f)
        });
        {
            let mut st = s.lock();
            s.next.store(0, Ordering::SeqCst);
            st.job = Some((job, chunks));
            st.generation += 1;
            s.generation.store(st.generation, Ordering::SeqCst);
            s.work.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.drain(f, chunks, 0)));
        s.lock().job = None;
        wait_until(s, &s.done, || s.active.load(Ordering::SeqCst) == 0);
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked");
        }
    }

    /// Splits `out` — `units` equal rows (channels, groups, heads) — into one contiguous
    /// piece per thread by [`part`] and calls `f(thread, rows, piece)` for every non-empty
    /// piece. Returns the first error any call returned.
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
        self.split_n(units, granule, [out], |thread, rows, [piece]| {
            f(thread, rows, piece)
        })
    }

    /// [`Pool::split`] over N buffers at once: each holds `units` equal rows and is cut into
    /// the rows of the same part, and `f(thread, rows, pieces)` gets the N pieces.
    pub fn split_n<const N: usize, F>(
        &self,
        units: usize,
        granule: usize,
        bufs: [&mut [f32]; N],
        f: F,
    ) -> Result<(), KernelError>
    where
        F: Fn(usize, Range<usize>, [&mut [f32]; N]) -> Result<(), KernelError> + Sync,
    {
        if units == 0 || bufs.iter().any(|b| !b.len().is_multiple_of(units)) {
            return Err(KernelError::Shape(
                "split: buffer is not a whole number of rows",
            ));
        }
        let rows: [usize; N] = std::array::from_fn(|i| bufs[i].len() / units);
        let chunks = self.threads.min(units.div_ceil(granule.max(1)));
        if chunks <= 1 {
            return f(0, 0..units, bufs);
        }
        // Each chunk takes its pieces out of a cell once: disjoint by construction, no unsafe.
        let mut rest = bufs;
        let mut cells = Vec::with_capacity(chunks);
        for j in 0..chunks {
            let r = part(units, chunks, granule, j);
            let piece: [&mut [f32]; N] = std::array::from_fn(|i| {
                let b = std::mem::take(&mut rest[i]);
                let (a, tail) = b.split_at_mut(r.len() * rows[i]);
                rest[i] = tail;
                a
            });
            cells.push(Mutex::new(Some((r, piece))));
        }
        let error = FirstError::default();
        self.run(chunks, &|thread, j| {
            let taken = cells[j].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((r, piece)) = taken {
                if r.is_empty() {
                    return;
                }
                error.keep(f(thread, r, piece));
            }
        });
        error.into_result()
    }
}

impl Pool {
    /// Splits `out` — `rows` equal rows of `cols` columns (channels × pixels) — by columns:
    /// one range of columns per thread by [`part`], and calls `f(thread, cols, pieces)` for
    /// every non-empty range with `pieces[r]` = row r's part (the strided counterpart of
    /// [`Pool::split`]). Returns the first error any call returned.
    pub fn split_columns<F>(
        &self,
        out: &mut [f32],
        rows: usize,
        granule: usize,
        f: F,
    ) -> Result<(), KernelError>
    where
        F: Fn(usize, Range<usize>, &mut [&mut [f32]]) -> Result<(), KernelError> + Sync,
    {
        if rows == 0 || !out.len().is_multiple_of(rows) {
            return Err(KernelError::Shape(
                "split_columns: output is not a whole number of rows",
            ));
        }
        let cols = out.len() / rows;
        let chunks = self.threads.min(cols.div_ceil(granule.max(1)));
        if chunks <= 1 {
            let mut pieces: Vec<&mut [f32]> = out.chunks_exact_mut(cols).collect();
            return f(0, 0..cols, &mut pieces);
        }
        let base = SendPtr(out.as_mut_ptr());
        let error = FirstError::default();
        self.run(chunks, &|thread, j| {
            let c = part(cols, chunks, granule, j);
            if c.is_empty() {
                return;
            }
            // SAFETY: the column parts of a partition are disjoint ranges inside 0..cols and
            // each chunk runs once, so every (row, part) slice is a disjoint piece of `out`,
            // which stays mutably borrowed (and unused elsewhere) until `run` has returned.
            let mut pieces: Vec<&mut [f32]> = (0..rows)
                .map(|r| unsafe {
                    std::slice::from_raw_parts_mut(base.at(r * cols + c.start), c.len())
                })
                .collect();
            error.keep(f(thread, c, &mut pieces));
        });
        error.into_result()
    }
}

/// The batch splits: one job over every sample of a batch, so a layer on small maps is one
/// synchronisation for the batch instead of one per sample. Each sample's `units` (rows or
/// columns) are cut into blocks of `granule`; the blocks of all samples, sample after sample,
/// are cut by [`part`] into one contiguous run per chunk, and a chunk calls `f` once per
/// sample its run touches (at most two partial samples per chunk). At batch 1 this is the
/// split of [`Pool::split`] / [`Pool::split_columns`].
impl Pool {
    /// Chunks of a batch split of `batch` × `blocks` blocks: one per thread (fewer when
    /// there are fewer blocks).
    fn batch_chunks(&self, batch: usize, blocks: usize) -> usize {
        self.threads.min(batch.saturating_mul(blocks))
    }

    /// [`Pool::split`] over a batch: `out` holds `batch` samples of `units` equal rows,
    /// sample after sample, and `f(thread, sample, rows, piece)` gets `piece` = rows `rows`
    /// of sample `sample`. Returns the first error any call returned.
    pub fn split_batch<F>(
        &self,
        out: &mut [f32],
        batch: usize,
        units: usize,
        granule: usize,
        f: F,
    ) -> Result<(), KernelError>
    where
        F: Fn(usize, usize, Range<usize>, &mut [f32]) -> Result<(), KernelError> + Sync,
    {
        let rows = batch * units;
        if rows == 0 || !out.len().is_multiple_of(rows) {
            return Err(KernelError::Shape(
                "split_batch: buffer is not a whole number of rows",
            ));
        }
        let row = out.len() / rows;
        let seg = Segments::new(batch, units, granule);
        let chunks = self.batch_chunks(batch, seg.blocks);
        // One contiguous piece per chunk (its run of rows), taken out of a cell once.
        let mut rest = out;
        let mut cells = Vec::with_capacity(chunks);
        for j in 0..chunks {
            let run = seg.rows(chunks, j);
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(run.len() * row);
            rest = tail;
            cells.push(Mutex::new(Some(piece)));
        }
        let error = FirstError::default();
        self.run(chunks, &|thread, j| {
            let taken = cells[j].lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(mut piece) = taken else {
                return;
            };
            // The run's samples are consecutive in `piece`.
            for (sample, r) in seg.of(chunks, j) {
                let (mine, tail) = std::mem::take(&mut piece).split_at_mut(r.len() * row);
                piece = tail;
                if !error.keep(f(thread, sample, r, mine)) {
                    return;
                }
            }
        });
        error.into_result()
    }

    /// [`Pool::split_columns`] over a batch: `out` holds `batch` samples of `rows` equal rows
    /// of columns (channels × pixels), sample after sample; the samples' columns are split,
    /// and `f(thread, sample, cols, pieces)` gets `pieces[r]` = row r's columns `cols` of
    /// sample `sample`. Returns the first error any call returned.
    pub fn split_batch_columns<F>(
        &self,
        out: &mut [f32],
        batch: usize,
        rows: usize,
        granule: usize,
        f: F,
    ) -> Result<(), KernelError>
    where
        F: Fn(usize, usize, Range<usize>, &mut [&mut [f32]]) -> Result<(), KernelError> + Sync,
    {
        let all_rows = batch * rows;
        if all_rows == 0 || !out.len().is_multiple_of(all_rows) {
            return Err(KernelError::Shape(
                "split_batch_columns: output is not a whole number of rows",
            ));
        }
        let cols = out.len() / all_rows;
        let seg = Segments::new(batch, cols, granule);
        let chunks = self.batch_chunks(batch, seg.blocks);
        let base = SendPtr(out.as_mut_ptr());
        let error = FirstError::default();
        self.run(chunks, &|thread, j| {
            // One list of row pieces per chunk, refilled for each sample of its run.
            let mut pieces: Vec<&mut [f32]> = Vec::with_capacity(rows);
            for (sample, c) in seg.of(chunks, j) {
                pieces.clear();
                // SAFETY: the runs of a partition are disjoint, so every (sample, row, column
                // range) slice is a disjoint piece of `out`, which stays mutably borrowed (and
                // unused elsewhere) until `run` has returned.
                pieces.extend((0..rows).map(|r| unsafe {
                    let at = (sample * rows + r) * cols + c.start;
                    std::slice::from_raw_parts_mut(base.at(at), c.len())
                }));
                if !error.keep(f(thread, sample, c, &mut pieces)) {
                    return;
                }
            }
        });
        error.into_result()
    }
}

/// A batch of `batch` samples of `units` units each, in blocks of `granule` units (a
/// sample's last block may be shorter), numbered sample after sample.
#[derive(Clone, Copy)]
struct Segments {
    batch: usize,
    units: usize,
    granule: usize,
    /// Blocks per sample.
    blocks: usize,
}

impl Segments {
    fn new(batch: usize, units: usize, granule: usize) -> Segments {
        let granule = granule.max(1);
        Segments {
            batch,
            units,
            granule,
            blocks: units.div_ceil(granule),
        }
    }

    /// The blocks of chunk `j` of `chunks`.
    fn run(&self, chunks: usize, j: usize) -> Range<usize> {
        part(self.batch * self.blocks, chunks, 1, j)
    }

    /// Flattened unit index (sample · units + unit) where block `b` starts.
    fn unit_at(&self, b: usize) -> usize {
        let (sample, block) = (b / self.blocks, b % self.blocks);
        sample * self.units + (block * self.granule).min(self.units)
    }

    /// The flattened units of chunk `j` of `chunks`.
    fn rows(&self, chunks: usize, j: usize) -> Range<usize> {
        let r = self.run(chunks, j);
        self.unit_at(r.start)..self.unit_at(r.end)
    }

    /// Chunk `j`'s (sample, unit range) pieces, sample by sample.
    fn of(&self, chunks: usize, j: usize) -> impl Iterator<Item = (usize, Range<usize>)> {
        let r = self.run(chunks, j);
        let s = *self;
        let samples = if r.is_empty() {
            0..0
        } else {
            r.start / s.blocks..(r.end - 1) / s.blocks + 1
        };
        samples.map(move |sample| {
            let lo = r.start.max(sample * s.blocks) - sample * s.blocks;
            let hi = r.end.min((sample + 1) * s.blocks) - sample * s.blocks;
            let unit = |b: usize| (b * s.granule).min(s.units);
            (sample, unit(lo)..unit(hi))
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        {
            let mut st = s.lock();
            st.shutdown = true;
            st.generation += 1;
            s.generation.store(st.generation, Ordering::SeqCst);
            s.work.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The first error the chunks of a job returned (the others are dropped: any one explains
/// the failure, and which is first may depend on scheduling, never the successful bits).
#[derive(Default)]
struct FirstError(Mutex<Option<KernelError>>);

impl FirstError {
    /// Keeps `r`'s error if it is the first; true when `r` is `Ok`.
    fn keep(&self, r: Result<(), KernelError>) -> bool {
        let Err(e) = r else {
            return true;
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        false
    }

    fn into_result(self) -> Result<(), KernelError> {
        match self.0.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A raw base pointer that may cross threads (the pieces derived from it are disjoint).
struct SendPtr(*mut f32);

// SAFETY: used only by `Pool::split` and `Pool::split_columns`, which derive disjoint pieces
// from it.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element pointer at `offset` (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Spins for up to [`SPIN`], then sleeps on `cv` until `ready()` (checked under the state
/// lock, which every notifier holds while changing what `ready` reads: no lost wake-ups).
fn wait_until(s: &Shared, cv: &Condvar, ready: impl Fn() -> bool) {
    let start = Instant::now();
    let mut n = 0u32;
    while !ready() {
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) && start.elapsed() > SPIN {
            let mut g = s.lock();
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
        wait_until(s, &s.work, || s.generation.load(Ordering::SeqCst) != seen);
        let (job, chunks) = {
            let mut st = s.lock();
            seen = st.generation;
            if st.shutdown {
                return;
            }
            match st.job {
                Some(job) => {
                    st.active += 1;
                    s.active.store(st.active, Ordering::SeqCst);
                    job
                }
                // Already withdrawn: the caller ran every chunk itself.
                None => continue,
            }
        };
        // SAFETY: registered in `active` while the job was published (see `Pool::run`).
        let f = unsafe { &*job.0 };
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.drain(f, chunks, index)));
        if ran.is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        let mut st = s.lock();
        st.active -= 1;
        s.active.store(st.active, Ordering::SeqCst);
        if st.active == 0 {
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
    fn split_columns_hands_every_element_to_exactly_one_thread() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            let (rows, cols) = (3, 37);
            let mut out = vec![0.0f32; rows * cols];
            for _ in 0..50 {
                pool.split_columns(&mut out, rows, 4, |_, c, pieces| {
                    assert_eq!(pieces.len(), rows);
                    for (r, piece) in pieces.iter_mut().enumerate() {
                        assert_eq!(piece.len(), c.len());
                        for (j, v) in piece.iter_mut().enumerate() {
                            *v += (r * cols + c.start + j) as f32;
                        }
                    }
                    Ok(())
                })
                .unwrap();
            }
            for (j, v) in out.iter().enumerate() {
                assert_eq!(*v, 50.0 * j as f32, "threads {threads}");
            }
        }
        let pool = Pool::new(2);
        assert!(pool
            .split_columns(&mut [0.0; 7], 2, 1, |_, _, _| Ok(()))
            .is_err());
    }

    #[test]
    fn batch_splits_hand_every_element_of_every_sample_to_exactly_one_call() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for (batch, units, granule) in [(1, 37, 4), (3, 7, 3), (4, 2, 1), (2, 5, 8)] {
                let row = 3;
                let mut out = vec![0.0f32; batch * units * row];
                pool.split_batch(&mut out, batch, units, granule, |_, s, r, piece| {
                    assert!(s < batch && r.end <= units && !r.is_empty());
                    assert!(r.start.is_multiple_of(granule));
                    assert_eq!(piece.len(), r.len() * row);
                    for (j, v) in piece.iter_mut().enumerate() {
                        *v += ((s * units + r.start) * row + j) as f32;
                    }
                    Ok(())
                })
                .unwrap();
                for (j, v) in out.iter().enumerate() {
                    assert_eq!(*v, j as f32, "rows: threads {threads}, batch {batch}");
                }
                let (rows, cols) = (units, 6);
                let mut out = vec![0.0f32; batch * rows * cols];
                pool.split_batch_columns(&mut out, batch, rows, granule, |_, s, c, pieces| {
                    assert!(s < batch && c.end <= cols && c.start.is_multiple_of(granule));
                    assert_eq!(pieces.len(), rows);
                    for (r, piece) in pieces.iter_mut().enumerate() {
                        for (j, v) in piece.iter_mut().enumerate() {
                            *v += ((s * rows + r) * cols + c.start + j) as f32;
                        }
                    }
                    Ok(())
                })
                .unwrap();
                for (j, v) in out.iter().enumerate() {
                    assert_eq!(*v, j as f32, "columns: threads {threads}, batch {batch}");
                }
            }
        }
    }

    #[test]
    fn a_batch_of_one_splits_as_split_does() {
        let pool = Pool::new(3);
        let ranges = |batched: bool| {
            let seen = Mutex::new(Vec::new());
            let mut out = vec![0.0f32; 40];
            if batched {
                pool.split_batch(&mut out, 1, 40, 6, |_, _, r, _| {
                    seen.lock().unwrap().push(r);
                    Ok(())
                })
            } else {
                pool.split(&mut out, 40, 6, |_, r, _| {
                    seen.lock().unwrap().push(r);
                    Ok(())
                })
            }
            .unwrap();
            let mut v = seen.into_inner().unwrap();
            v.sort_by_key(|r| r.start);
            v
        };
        assert_eq!(ranges(true), ranges(false));
    }

    #[test]
    fn batch_splits_refuse_ragged_buffers_and_pass_errors_on() {
        let pool = Pool::new(2);
        assert!(pool
            .split_batch(&mut [0.0; 7], 2, 1, 1, |_, _, _, _| Ok(()))
            .is_err());
        assert!(pool
            .split_batch_columns(&mut [0.0; 9], 2, 2, 1, |_, _, _, _| Ok(()))
            .is_err());
        let e = pool.split_batch(&mut [0.0; 8], 4, 2, 1, |_, s, _, _| {
            if s == 3 {
                Err(KernelError::Shape("x"))
            } else {
                Ok(())
            }
        });
        assert_eq!(e, Err(KernelError::Shape("x")));
    }

    #[test]
    fn every_chunk_runs_exactly_once_over_many_jobs() {
        for threads in [2, 4] {
            let pool = Pool::new(threads);
            let counts: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..3000 {
                pool.run(9, &|thread, j| {
                    assert!(thread < threads);
                    counts[j].fetch_add(1, Ordering::SeqCst);
                });
            }
            assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 3000));
        }
    }

    #[test]
    fn errors_and_panics_reach_the_caller() {
        let pool = Pool::new(2);
        let mut out = vec![0.0f32; 8];
        let e = pool.split(&mut out, 8, 1, |_, rows, _| {
            if rows.start > 0 {
                Err(KernelError::Shape("x"))
            } else {
                Ok(())
            }
        });
        assert_eq!(e, Err(KernelError::Shape("x")));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(2, &|_, j| assert!(j != 1, "boom"))
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.run(7, &|_, _| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 7);
    }
}
