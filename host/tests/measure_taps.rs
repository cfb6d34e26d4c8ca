//! `host measure` against the spec, not through core's operator: 4× SR with the golden taps of
//! spec §10.5 ([-7, -45, -75, -49, 93, 399, 745, 987, 987, 745, 399, 93, -49, -75, -45, -7] / 4096,
//! half-sample symmetric reflection, H then W), random inpainting with floor(HW·p) missing
//! locations, the PNG mapping of formats §1 and the metadata of formats §4.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

const TAPS: [f64; 16] = [
    -7.0, -45.0, -75.0, -49.0, 93.0, 399.0, 745.0, 987.0, 987.0, 745.0, 399.0, 93.0, -49.0, -75.0,
    -45.0, -7.0,
];

fn refl(i: i64, n: i64) -> usize {
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read(path: &PathBuf) -> (Tensors, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let d = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, (t.shape().to_vec(), d))
        })
        .collect();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn measure(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("measure")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sr4_matches_the_spec_taps_and_inpaint_the_mask_law() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("measure_taps");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (h, w) = (16usize, 12usize);
    let mut state = 99u32;
    let img = image::GrayImage::from_fn(w as u32, h as u32, |_, _| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        image::Luma([(state >> 16) as u8])
    });
    let gt = dir.join("gt.png");
    img.save(&gt).unwrap();
    let px = |r: usize, c: usize| f64::from(img.get_pixel(c as u32, r as u32).0[0]) / 255.0;

    let y_path = dir.join("y.safetensors");
    measure(&[
        "--task",
        "sr4",
        "--input",
        gt.to_str().unwrap(),
        "--sigma-y",
        "0",
        "--range",
        "0,1",
        "--out",
        y_path.to_str().unwrap(),
    ]);
    let (tensors, meta) = read(&y_path);
    let (shape, y) = &tensors["y"];
    assert_eq!(shape, &vec![1, 1, h / 4, w / 4]);
    for i in 0..h / 4 {
        for j in 0..w / 4 {
            let mut want = 0.0;
            for (a, ta) in TAPS.iter().enumerate() {
                let r = refl(4 * i as i64 + a as i64 - 6, h as i64);
                for (b, tb) in TAPS.iter().enumerate() {
                    let c = refl(4 * j as i64 + b as i64 - 6, w as i64);
                    want += ta / 4096.0 * tb / 4096.0 * px(r, c);
                }
            }
            let got = f64::from(y[i * (w / 4) + j]);
            assert!((got - want).abs() < 1e-5, "y[{i},{j}] = {got}, spec {want}");
        }
    }
    assert_eq!(meta["tweedie.task"], "sr4");
    assert_eq!(meta["tweedie.data_range"], "0,1");
    assert_eq!(meta["tweedie.sigma_y"], "0");
    assert_eq!(meta["tweedie.source_sha256"].len(), 64);
    assert!(dir.join("y.png").exists(), "PNG preview");

    // Inpainting, [-1, 1], σ_y = 0: y = mask ⊙ x exactly, floor(HW·0.92) missing, PNG mapping
    // f32(v)/255·2 − 1 in f32.
    let ip = dir.join("ip.safetensors");
    measure(&[
        "--task",
        "inpaint",
        "--input",
        gt.to_str().unwrap(),
        "--sigma-y",
        "0",
        "--seed",
        "3",
        "--out",
        ip.to_str().unwrap(),
    ]);
    let (tensors, meta) = read(&ip);
    let (_, y) = &tensors["y"];
    let (mshape, mask) = &tensors["mask"];
    assert_eq!(mshape, &vec![1, 1, h, w]);
    assert_eq!(
        mask.iter().filter(|&&m| m == 0.0).count(),
        (h * w) * 92 / 100
    );
    for (e, (&yv, &m)) in y.iter().zip(mask.iter()).enumerate() {
        let v = img.get_pixel((e % w) as u32, (e / w) as u32).0[0];
        let x = f32::from(v) / 255.0 * 2.0 - 1.0;
        assert_eq!(yv, m * x, "element {e}");
    }
    assert_eq!(meta["tweedie.seed"], "3");
    assert_eq!(meta["tweedie.data_range"], "-1,1");

    // Noise: σ_y > 0 adds exactly σ_y times core's counter-based draws.
    let noisy = dir.join("noisy.safetensors");
    measure(&[
        "--task",
        "denoise",
        "--input",
        gt.to_str().unwrap(),
        "--sigma-y",
        "0.5",
        "--seed",
        "2",
        "--out",
        noisy.to_str().unwrap(),
    ]);
    let (tensors, _) = read(&noisy);
    let (_, y) = &tensors["y"];
    for (e, &yv) in y.iter().enumerate() {
        let v = img.get_pixel((e % w) as u32, (e / w) as u32).0[0];
        let x = f32::from(v) / 255.0 * 2.0 - 1.0;
        let n =
            tweedie_core::noise::gaussian(2, 0, tweedie_core::noise::COUNTER_MEASUREMENT, e as u64);
        assert_eq!(yv, x + 0.5 * n);
    }
}
