//! Builds the VP (DDPM) noise table at compile time, in f64 with `libm`, exactly as the
//! official code does with numpy: beta = linspace(1e-4, 0.02, 1000), alphabar = cumprod(1 - beta),
//! sigma = sqrt((1 - alphabar) / alphabar). The table is emitted as `const` arrays so a
//! firmware build keeps it in flash and nothing is computed at run time.
use std::{env, fs, path::PathBuf};

const N: usize = 1000;

/// numpy.linspace(start, stop, num): step = (stop - start) / (num - 1); y = i * step + start;
/// the last element is set to `stop` exactly.
fn linspace(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut y = [0.0; N];
    for (i, v) in y.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    y[N - 1] = stop;
    y
}

fn emit(name: &str, doc: &str, v: &[f64; N]) -> String {
    let mut s = format!("/// {doc}\npub const {name}: [f64; {N}] = [\n");
    for x in v {
        // `{:?}` prints the shortest representation that round-trips exactly.
        s.push_str(&format!("    {x:?},\n"));
    }
    s.push_str("];\n");
    s
}

fn main() {
    let beta = linspace(1e-4, 0.02);
    let mut alpha_bar = [0.0; N];
    let mut acc = 1.0f64;
    for t in 0..N {
        acc *= 1.0 - beta[t];
        alpha_bar[t] = acc;
    }
    let mut sigma = [0.0; N];
    for t in 0..N {
        sigma[t] = libm::sqrt((1.0 - alpha_bar[t]) / alpha_bar[t]);
    }
    let mut out = String::new();
    out.push_str(&emit("BETA", "beta_t, t = 0..999 (0-based).", &beta));
    out.push_str(&emit(
        "ALPHA_BAR",
        "alphabar_t = prod_{s<=t} (1 - beta_s).",
        &alpha_bar,
    ));
    out.push_str(&emit(
        "SIGMA",
        "sigma_t = sqrt((1 - alphabar_t) / alphabar_t).",
        &sigma,
    ));
    let path = PathBuf::from(env::var("OUT_DIR").unwrap()).join("vp_table.rs");
    fs::write(path, out).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
