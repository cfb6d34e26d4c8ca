//! `host sample --device`: `cpu` is the default, `auto` falls back to the CPU with one line
//! and the CPU's samples, `cuda` without a usable GPU is one clear error and writes nothing.
//! (On a GPU machine `cuda`/`auto` open the GPU; scripts/gpu-check.sh covers that case.)

mod common;

use common::{host, ok, s, scratch_in};

fn args<'a>(out: &'a str, device: &'a str) -> Vec<&'a str> {
    vec![
        "sample",
        "--preset",
        "vp-uncond-sigmoid",
        "--steps",
        "2",
        "--n",
        "2",
        "--seed",
        "5",
        "--quiet",
        "--out",
        out,
        "--device",
        device,
        "--ptx",
        "/nonexistent/tweedie.ptx",
    ]
}

fn has_gpu() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

#[test]
fn auto_falls_back_to_the_cpu_with_the_same_samples() {
    if has_gpu() {
        return;
    }
    let dir = scratch_in("device_cli", "auto");
    let (cpu, auto) = (dir.join("cpu"), dir.join("auto"));
    ok(&args(&s(&cpu), "cpu"));
    let out = ok(&args(&s(&auto), "auto"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device auto") && err.contains("CPU"),
        "{err}"
    );
    let read = |d: &std::path::Path| std::fs::read(d.join("samples.safetensors")).unwrap();
    assert_eq!(read(&cpu), read(&auto));
}

#[test]
fn cuda_without_a_gpu_is_one_clear_error_and_writes_nothing() {
    let dir = scratch_in("device_cli", "cuda").join("out");
    let out = host(&args(&s(&dir), "cuda"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUDA") || err.contains("driver") || err.contains("PTX"),
        "{err}"
    );
    assert!(!dir.exists(), "no output folder after a failed run");
}

#[test]
fn cuda_refuses_jobs_the_device_path_does_not_cover() {
    let dir = scratch_in("device_cli", "snapshots").join("out");
    let path = s(&dir);
    let mut a = args(&path, "cuda");
    a.extend(["--snapshot-every", "1"]);
    let out = host(&a);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device cuda") && err.contains("snapshot"),
        "{err}"
    );
    assert!(!dir.exists());
}
