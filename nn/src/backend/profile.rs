//! Opt-in per-kernel timers: set `TWEEDIE_PROFILE=1` and the forward pass accumulates wall
//! time, calls and multiply-adds per kind of layer; [`report`] formats them (host bench
//! prints it). Off by default, where a timer costs one relaxed load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// What a timed section does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 3×3 convolutions (stride 1 or 2).
    Conv3x3,
    /// 1×1 convolutions (ResBlock skips, attention qkv / proj_out).
    Conv1x1,
    /// GroupNorm (+FiLM, +SiLU).
    GroupNorm,
    /// The attention core (logits, softmax, weighted sum).
    Attention,
    /// Linear layers (time MLP, emb_layers).
    Linear,
    /// Nearest upsampling and average pooling.
    Resample,
    /// Residual additions (and the additive time embedding).
    Add,
    /// Skip pushes and concatenations.
    Copy,
}

const KINDS: [(Kind, &str); 8] = [
    (Kind::Conv3x3, "conv3x3"),
    (Kind::Conv1x1, "conv1x1"),
    (Kind::GroupNorm, "group_norm"),
    (Kind::Attention, "attention"),
    (Kind::Linear, "linear"),
    (Kind::Resample, "resample"),
    (Kind::Add, "add"),
    (Kind::Copy, "copy"),
];

struct Counters {
    nanos: [AtomicU64; 8],
    calls: [AtomicU64; 8],
    macs: [AtomicU64; 8],
}

static ENABLED: OnceLock<bool> = OnceLock::new();
static COUNTERS: Counters = Counters {
    nanos: [const { AtomicU64::new(0) }; 8],
    calls: [const { AtomicU64::new(0) }; 8],
    macs: [const { AtomicU64::new(0) }; 8],
};

/// Whether `TWEEDIE_PROFILE` is set (to anything but `0` or empty).
pub fn enabled() -> bool {
    *ENABLED
        .get_or_init(|| std::env::var("TWEEDIE_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// A running timer; adds its time on drop.
pub struct Scope {
    kind: usize,
    macs: u64,
    start: Instant,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let ns = self.start.elapsed().as_nanos() as u64;
        COUNTERS.nanos[self.kind].fetch_add(ns, Ordering::Relaxed);
        COUNTERS.calls[self.kind].fetch_add(1, Ordering::Relaxed);
        COUNTERS.macs[self.kind].fetch_add(self.macs, Ordering::Relaxed);
    }
}

/// Starts timing a section of `kind` doing `macs` multiply-adds (None when profiling is off).
pub fn scope(kind: Kind, macs: u64) -> Option<Scope> {
    enabled().then(|| Scope {
        kind: KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0),
        macs,
        start: Instant::now(),
    })
}

/// Clears the counters (e.g. after a warm-up pass).
pub fn reset() {
    for i in 0..KINDS.len() {
        COUNTERS.nanos[i].store(0, Ordering::Relaxed);
        COUNTERS.calls[i].store(0, Ordering::Relaxed);
        COUNTERS.macs[i].store(0, Ordering::Relaxed);
    }
}

/// One line per kind: seconds, share, calls and GFLOP/s where it multiplies.
pub fn report() -> String {
    let total: u64 = COUNTERS
        .nanos
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum();
    let mut s = format!("profile: {:.3} s in timed kernels\n", total as f64 / 1e9);
    for (i, (_, name)) in KINDS.iter().enumerate() {
        let ns = COUNTERS.nanos[i].load(Ordering::Relaxed);
        let calls = COUNTERS.calls[i].load(Ordering::Relaxed);
        let macs = COUNTERS.macs[i].load(Ordering::Relaxed);
        if calls == 0 {
            continue;
        }
        let rate = if macs > 0 {
            format!(", {:.1} GFLOP/s", 2.0 * macs as f64 / ns.max(1) as f64)
        } else {
            String::new()
        };
        s += &format!(
            "  {name:<11} {:8.3} s {:5.1}%  {calls:6} calls{rate}\n",
            ns as f64 / 1e9,
            100.0 * ns as f64 / total.max(1) as f64
        );
    }
    s
}
