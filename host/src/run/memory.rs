//! The memory a command will need, estimated before it allocates, against a limit: by default
//! 80 % of the smallest of the memory available now (`MemAvailable`), the cgroup's limit
//! (`memory.max`) and the address space `ulimit -v` leaves; `--max-memory` sets it. A run above the limit is refused with one line that
//! names the estimate, instead of aborting half-way on a failed allocation.
//!
//! The estimates are upper bounds of the large buffers only (state, noise, activations,
//! weights); small allocations are covered by the 20 % margin. [`denoiser_bytes`] is the cost
//! of one denoiser call on a batch, the figure a batch rule needs.

use std::sync::OnceLock;

use anyhow::{bail, Result};
use tweedie_nn::denoiser::{Model, Source};
use tweedie_nn::model::adm::arch::Layer;
use tweedie_nn::model::adm::forward::samples_per_pass;
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::weights::Precision;

/// The limit set by `--max-memory` (bytes).
static MAX_MEMORY: OnceLock<u64> = OnceLock::new();

/// Each thread's stack (Rust's default for spawned threads).
pub const THREAD_BYTES: u64 = 2 << 20;
/// Share of the available memory a run may plan to use.
const DEFAULT_SHARE: f64 = 0.8;

/// Sets the limit from `--max-memory` (once per process).
pub fn set_limit(bytes: u64) {
    let _ = MAX_MEMORY.set(bytes);
}

/// Parses a byte count: `123`, `512M`, `16G`, `1.5T` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text}: unknown unit (use K, M, G or T)")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text}: not a size like 16G"))?;
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text}: not a size like 16G"));
    }
    Ok(bytes as u64)
}

/// A `key: N kB` line of /proc/meminfo, in bytes.
fn meminfo(key: &str) -> Option<u64> {
    meminfo_of("/proc/meminfo", key)
}

/// A `key: N kB` line of a /proc file, in bytes.
fn meminfo_of(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory limit of this process's cgroup: v2 `memory.max`, or v1
/// `memory.limit_in_bytes` (at the process's cgroup path or, in a container, the root).
fn cgroup_max() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read =
        |file: String| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    for line in cgroup.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            let path = path.trim_end_matches('/');
            if let Some(v) = read(format!("/sys/fs/cgroup{path}/memory.max")) {
                return Some(v);
            }
        }
        let mut parts = line.splitn(3, ':');
        if let (Some(_), Some("memory"), Some(path)) = (parts.next(), parts.next(), parts.next()) {
            let path = path.trim_end_matches('/');
            return read(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
                .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes".into()));
        }
    }
    None
}

/// What `ulimit -v` leaves: the address-space limit less what is mapped already.
fn address_space_left() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let mapped = meminfo_of("/proc/self/status", "VmSize:").unwrap_or(0);
    Some(lim.rlim_cur.saturating_sub(mapped))
}

/// The limit in bytes and how it was set, for the message.
pub fn limit() -> (u64, String) {
    if let Some(&bytes) = MAX_MEMORY.get() {
        return (bytes, "--max-memory".into());
    }
    let candidates = [
        (meminfo("MemAvailable:"), "the available memory"),
        (cgroup_max(), "the cgroup's memory limit"),
        (address_space_left(), "the address space `ulimit -v` leaves"),
    ];
    match candidates
        .into_iter()
        .filter_map(|(v, what)| Some((v?, what)))
        .min_by_key(|(v, _)| *v)
    {
        Some((base, what)) => (
            (base as f64 * DEFAULT_SHARE) as u64,
            format!("80% of {what}"),
        ),
        None => (u64::MAX, "no known limit".into()),
    }
}

/// A byte count for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses `what` when its estimate `bytes` exceeds the limit.
pub fn check(what: &str, bytes: u64) -> Result<()> {
    let (limit, source) = limit();
    if bytes > limit {
        let need = if bytes == u64::MAX {
            "more than 16 EiB".to_string()
        } else {
            format!("about {}", human_bytes(bytes))
        };
        bail!(
            "{what} needs {need} of memory, more than the limit of {} ({source}); use \
             smaller sizes, or --max-memory to raise the limit",
            human_bytes(limit)
        );
    }
    Ok(())
}

/// `a · b · …` in bytes, saturating (an absurd size is simply far above any limit).
pub fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

/// The weights of `parameters` stored in `precision`.
pub fn weights_bytes(parameters: u64, precision: Precision) -> u64 {
    let per = match precision {
        Precision::F32 => 4,
        Precision::F16 => 2,
    };
    parameters.saturating_mul(per)
}

/// One ADM forward on `batch` images of side `size` with `threads` threads. The network runs
/// the batch in passes of [`samples_per_pass`] images, layer by layer, through one arena that
/// holds per image of a pass every block output kept for the skips, a few working copies of
/// the widest activation and the attention matrix; each thread has convolution scratch (3x3
/// columns of the widest input); the batch adds its input and output.
pub fn adm_forward_bytes(arch: &AdmArch, size: u64, batch: u64, threads: u64) -> u64 {
    let side = |ds: usize| size / (ds.max(1) as u64);
    let blocks = arch
        .input_blocks
        .iter()
        .chain(std::iter::once(&arch.middle_block))
        .chain(&arch.output_blocks);
    let mut kept = 0u64;
    let mut widest = 0u64;
    let mut attention = 0u64;
    for block in blocks {
        let (s_in, s_out) = (side(block.ds_in), side(block.ds_out));
        kept = kept.saturating_add(product(&[block.c_out as u64, s_out, s_out]));
        widest = widest.max(product(&[block.c_in as u64, s_in, s_in]));
        if block
            .layers
            .iter()
            .any(|l| matches!(l, Layer::Attention(_)))
        {
            let tokens = product(&[s_in, s_in]);
            attention = attention.max(tokens.saturating_mul(tokens));
        }
    }
    let pass = samples_per_pass(arch, side(1) as usize, side(1) as usize, batch as usize);
    let arena = kept
        .saturating_add(widest.saturating_mul(8))
        .saturating_add(attention)
        .saturating_mul(pass as u64);
    let scratch = product(&[widest, 9, threads.max(1)]);
    let io = product(&[
        (arch.config.in_channels + arch.config.out_channels) as u64,
        size,
        size,
        batch,
    ]);
    product(&[arena.saturating_add(scratch).saturating_add(io), 4])
}

/// One denoiser of `model` with `threads` threads, called on `batch` chains: the network's
/// forward, or the prior's few vectors per chain.
pub fn denoiser_bytes(model: &Model, batch: u64, threads: u64) -> u64 {
    let chain = model.chain_len() as u64;
    match &model.source {
        Source::Adm { arch, .. } => adm_forward_bytes(arch, model.size as u64, batch, threads),
        // NCSN++ keeps every level's activations at up to 4x the base width.
        Source::Ncsnpp { arch, .. } => {
            let base = product(&[arch.channels() as u64, model.size as u64, model.size as u64]);
            product(&[base, 64 + threads, 4]).saturating_add(product(&[chain, batch, 8]))
        }
        Source::Gaussian(_) | Source::FullGaussian(_) => product(&[chain, batch, 4, 4]),
        // The distances of each chain of the batch to every image, and the sums in f64.
        Source::TrainingSet(s) => product(&[chain, batch, 4, 4]).saturating_add(product(&[
            batch,
            s.len() as u64 + chain,
            8,
        ])),
        // Every component's D of one chain, and the weighted sum in f64.
        Source::GaussianMixture(g) => {
            product(&[chain, batch, 4, 4]).saturating_add(product(&[chain, g.len() as u64 + 2, 4]))
        }
    }
}

/// A sampling run: the final states of `n` chains (and `snapshots` grids of u8), and per
/// worker its batch's state, noise and denoised vectors plus one denoiser call, plus the
/// threads' stacks. The weights are already loaded when this is checked.
pub fn sampling_bytes(model: &Model, n: u64, batch: u64, threads: u64, snapshots: u64) -> u64 {
    let chain = model.chain_len() as u64;
    let batches = usize::try_from(n.div_ceil(batch.max(1))).unwrap_or(usize::MAX);
    let threads_usize = usize::try_from(threads).unwrap_or(usize::MAX);
    let (workers, inner) = model.split_threads(threads_usize, batches);
    let per_worker =
        product(&[chain, batch, 4, 6]).saturating_add(denoiser_bytes(model, batch, inner as u64));
    product(&[chain, n, 4])
        .saturating_add(product(&[chain, n, snapshots.saturating_add(1)]))
        .saturating_add(per_worker.saturating_mul(workers as u64))
        .saturating_add(product(&[workers as u64, inner as u64, THREAD_BYTES]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("16G"), Ok(16 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("nanG").is_err());
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        assert_eq!(product(&[u64::MAX, 3, 4]), u64::MAX);
        assert_eq!(product(&[2, 3, 4]), 24);
    }

    #[test]
    fn the_adm_estimate_grows_with_batch_and_size() {
        let arch = AdmArch::new(&tweedie_nn::model::adm::AdmConfig::ffhq256()).unwrap();
        let one = adm_forward_bytes(&arch, 256, 1, 1);
        let io = ((arch.config.in_channels + arch.config.out_channels) * 256 * 256 * 4) as u64;
        assert_eq!(adm_forward_bytes(&arch, 256, 4, 1), one + 3 * io);
        assert!(adm_forward_bytes(&arch, 256, 1, 2) > one);
        // FFHQ-256 at batch 1 keeps a few hundred megabytes to a few gigabytes.
        assert!(one > 200 << 20 && one < 8 << 30, "{}", human_bytes(one));
        assert!(adm_forward_bytes(&arch, 65_536, 1, 1) > 1 << 40);
    }

    #[test]
    fn the_adm_arena_holds_the_samples_of_one_pass() {
        // FFHQ's topology at 32×32 runs a few samples per pass: the arena grows with them,
        // then only the input and output grow with the batch.
        let arch = AdmArch::new(&tweedie_nn::model::adm::AdmConfig::ffhq256()).unwrap();
        let io = ((arch.config.in_channels + arch.config.out_channels) * 32 * 32 * 4) as u64;
        let pass = samples_per_pass(&arch, 32, 32, 64) as u64;
        assert!(pass > 1 && pass < 64, "{pass}");
        let rest = |batch: u64| adm_forward_bytes(&arch, 32, batch, 1) - batch * io;
        let arena = rest(2) - rest(1);
        assert!(arena > 0);
        assert_eq!(rest(pass), rest(1) + (pass - 1) * arena);
        assert_eq!(rest(64), rest(pass));
    }
}
