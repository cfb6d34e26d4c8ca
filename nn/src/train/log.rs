//! Loss logging: `loss.csv` (one row per step, flushed after each row, resumable) and a
//! loss-curve PNG (log-scale y, raw losses as light dots, a trailing moving average as a line,
//! decade grid lines labelled with a tiny built-in bitmap font).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};

/// An append-only CSV log: a header line `step,<columns…>`, then one row per step.
#[derive(Debug)]
pub struct LossCsv {
    file: File,
    path: PathBuf,
    columns: usize,
}

impl LossCsv {
    /// Opens `path` for a run resuming at step `from_step` (0 for a new run): a missing or
    /// empty file gets the header; an existing one must have the same header, and rows with
    /// step > `from_step` (written after the checkpoint being resumed) are dropped first, so
    /// the log never holds a step twice. Row `s` is the step that completed the s-th update,
    /// written before the checkpoint at step s, so that row stays.
    pub fn open(path: &Path, columns: &[&str], from_step: u64) -> Result<LossCsv> {
        let header = std::iter::once("step")
            .chain(columns.iter().copied())
            .collect::<Vec<_>>()
            .join(",");
        let kept = match std::fs::read_to_string(path) {
            Ok(text) if !text.is_empty() => keep_rows_before(&text, &header, from_step, path)?,
            Ok(_) => format!("{header}\n"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{header}\n"),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        super::checkpoint::write_atomic(path, kept.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(LossCsv {
            file,
            path: path.to_path_buf(),
            columns: columns.len(),
        })
    }

    /// Appends one row and flushes it to the OS (values in shortest round-trip form).
    pub fn append(&mut self, step: u64, values: &[f64]) -> Result<()> {
        if values.len() != self.columns {
            bail!(
                "{}: {} values for {} columns",
                self.path.display(),
                values.len(),
                self.columns
            );
        }
        let mut line = step.to_string();
        for v in values {
            line.push(',');
            line.push_str(&v.to_string());
        }
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn keep_rows_before(text: &str, header: &str, from_step: u64, path: &Path) -> Result<String> {
    let mut lines = text.lines();
    let found = lines.next().unwrap_or_default();
    if found != header {
        bail!(
            "{}: header `{found}` differs from `{header}`",
            path.display()
        );
    }
    let mut out = format!("{header}\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let step = row_step(line, path)?;
        if step <= from_step {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn row_step(line: &str, path: &Path) -> Result<u64> {
    let first = line.split(',').next().unwrap_or_default();
    first
        .parse()
        .with_context(|| format!("{}: bad row `{line}`", path.display()))
}

/// Reads `(step, value)` pairs of one column of a loss CSV (rows with a non-numeric or
/// non-positive value in that column are kept; the plot skips what it cannot show).
pub fn read_column(path: &Path, column: &str) -> Result<Vec<(u64, f64)>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let header = lines
        .next()
        .transpose()?
        .with_context(|| format!("{}: empty file", path.display()))?;
    let Some(col) = header.split(',').position(|c| c == column) else {
        bail!("{}: no column `{column}` in `{header}`", path.display());
    };
    let mut out = Vec::new();
    for line in lines {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let step = row_step(&line, path)?;
        let value = line
            .split(',')
            .nth(col)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{}: bad row `{line}`", path.display()))?;
        out.push((step, value));
    }
    Ok(out)
}

/// Trailing moving average: `out[i]` = mean of `values[i+1−window ..= i]` (fewer at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const RAW: Rgb<u8> = Rgb([160, 190, 230]);
const AVERAGE: Rgb<u8> = Rgb([200, 40, 30]);
const MARGIN_LEFT: u32 = 34;
const MARGIN: u32 = 8;

/// Draws the loss curve of `(step, loss)` points: log-scale y over the decades spanned by the
/// positive finite losses, linear x over the steps, the raw points and their `window`-step
/// moving average. Written atomically to `path` (PNG).
pub fn plot_loss_curve(
    path: &Path,
    points: &[(u64, f64)],
    window: usize,
    width: u32,
    height: u32,
) -> Result<()> {
    let bytes = loss_curve_png(points, window, width, height)?;
    super::checkpoint::write_atomic(path, &bytes)
}

/// The loss curve of [`plot_loss_curve`] as PNG bytes.
pub fn loss_curve_png(
    points: &[(u64, f64)],
    window: usize,
    width: u32,
    height: u32,
) -> Result<Vec<u8>> {
    let img = render_loss_curve(points, window, width, height)?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("cannot encode the loss curve PNG")?;
    Ok(bytes)
}

/// The loss-curve image (see [`plot_loss_curve`]).
pub fn render_loss_curve(
    points: &[(u64, f64)],
    window: usize,
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    if width < MARGIN_LEFT + MARGIN + 16 || height < 2 * MARGIN + 16 {
        bail!("loss curve of {width}x{height} is too small");
    }
    let pts: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|&(_, l)| l.is_finite() && l > 0.0)
        .collect();
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    let plot = Plot::new(&pts, width, height);
    for decade in plot.lo..=plot.hi {
        let y = plot.y(10f64.powi(decade));
        draw_hline(&mut img, MARGIN_LEFT, width - MARGIN, y, GRID);
        draw_label(&mut img, 1, y.saturating_sub(2), &format!("{decade}"));
    }
    draw_hline(&mut img, MARGIN_LEFT, width - MARGIN, height - MARGIN, AXIS);
    for y in MARGIN..=height - MARGIN {
        img.put_pixel(MARGIN_LEFT, y, AXIS);
    }
    for &(s, l) in &pts {
        img.put_pixel(plot.x(s), plot.y(l), RAW);
    }
    let losses: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let avg = moving_average(&losses, window);
    let line: Vec<(u32, u32)> = pts
        .iter()
        .zip(&avg)
        .map(|(&(s, _), &a)| (plot.x(s), plot.y(a)))
        .collect();
    for pair in line.windows(2) {
        draw_line(&mut img, pair[0], pair[1], AVERAGE);
    }
    if let [only] = line[..] {
        img.put_pixel(only.0, only.1, AVERAGE);
    }
    Ok(img)
}

/// Maps steps and log10(loss) onto the plot area.
struct Plot {
    x0: u64,
    x1: u64,
    lo: i32,
    hi: i32,
    width: u32,
    height: u32,
}

impl Plot {
    fn new(pts: &[(u64, f64)], width: u32, height: u32) -> Plot {
        let (x0, x1) = pts
            .iter()
            .fold((u64::MAX, 0), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (lmin, lmax) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.1.log10()), b.max(p.1.log10()))
            });
        let (lo, hi) = if pts.is_empty() {
            (-1, 0)
        } else {
            let lo = lmin.floor() as i32;
            (lo, (lmax.ceil() as i32).max(lo + 1))
        };
        Plot {
            x0: x0.min(x1),
            x1,
            lo,
            hi,
            width,
            height,
        }
    }

    fn x(&self, step: u64) -> u32 {
        let span = (self.x1 - self.x0).max(1) as f64;
        let w = (self.width - MARGIN_LEFT - MARGIN - 1) as f64;
        MARGIN_LEFT + 1 + ((step - self.x0) as f64 / span * w).round() as u32
    }

    fn y(&self, loss: f64) -> u32 {
        let frac = (loss.log10() - self.lo as f64) / (self.hi - self.lo) as f64;
        let h = (self.height - 2 * MARGIN) as f64;
        let y = (self.height - MARGIN) as f64 - frac.clamp(0.0, 1.0) * h;
        y.round() as u32
    }
}

fn draw_hline(img: &mut RgbImage, x0: u32, x1: u32, y: u32, c: Rgb<u8>) {
    for x in x0..=x1 {
        img.put_pixel(x, y, c);
    }
}

/// Bresenham's line between two pixels (both inside the image).
fn draw_line(img: &mut RgbImage, a: (u32, u32), b: (u32, u32), c: Rgb<u8>) {
    let (mut x, mut y) = (a.0 as i64, a.1 as i64);
    let (x1, y1) = (b.0 as i64, b.1 as i64);
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        img.put_pixel(x as u32, y as u32, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// 3×5 glyphs for the decade labels (the exponent of 10: digits and minus), one row per
/// 3-bit mask, most significant bit on the left.
fn glyph(ch: char) -> Option<[u8; 5]> {
    Some(match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// Draws a decade's exponent (the label `-2` marks 10⁻²) at (x, y), clipped to the image.
fn draw_label(img: &mut RgbImage, x: u32, y: u32, exponent: &str) {
    let mut cx = x;
    for ch in exponent.chars() {
        let Some(rows) = glyph(ch) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3u32 {
                if bits >> (2 - col) & 1 == 1 {
                    let (px, py) = (cx + col, y + r as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, AXIS);
                    }
                }
            }
        }
        cx += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tweedie-log-{}-{name}", std::process::id()))
    }

    #[test]
    fn csv_appends_and_resumes_without_duplicates() {
        let path = tmp("loss.csv");
        let _ = std::fs::remove_file(&path);
        let mut log = LossCsv::open(&path, &["loss", "lr"], 0).unwrap();
        for s in 0..5 {
            log.append(s, &[1.0 / (s + 1) as f64, 1e-4]).unwrap();
        }
        assert!(log.append(5, &[1.0]).is_err());
        drop(log);
        // Resume from the checkpoint at step 3 (written after row 3): row 4 is dropped, then
        // rewritten; row 3 stays.
        let mut log = LossCsv::open(&path, &["loss", "lr"], 3).unwrap();
        log.append(4, &[0.125, 1e-4]).unwrap();
        let rows = read_column(&path, "loss").unwrap();
        assert_eq!(
            rows,
            vec![(0, 1.0), (1, 0.5), (2, 1.0 / 3.0), (3, 0.25), (4, 0.125)]
        );
        assert!(LossCsv::open(&path, &["other"], 0).is_err());
        assert!(read_column(&path, "nope").is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn moving_average_is_trailing() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(moving_average(&v, 2), vec![1.0, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(moving_average(&v, 1), v.to_vec());
        assert_eq!(moving_average(&v, 10), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn curve_is_log_scaled() {
        // A loss falling from 1 to 0.01: the moving average (window 1) starts at the top of
        // the plot area (decade 0) and ends at its bottom (decade −2).
        let pts: Vec<(u64, f64)> = (0..=100)
            .map(|s| (s, 10f64.powf(-(s as f64) / 50.0)))
            .collect();
        let img = render_loss_curve(&pts, 1, 200, 100).unwrap();
        assert_eq!(*img.get_pixel(MARGIN_LEFT + 1, MARGIN), AVERAGE);
        assert_eq!(*img.get_pixel(200 - MARGIN, 100 - MARGIN), AVERAGE);
        // Halfway (step 50, loss 0.1) is halfway up the plot: log scale.
        // x = 35 + round(0.5 · 157) = 114, y = 92 − 0.5 · 84 = 50.
        assert_eq!(*img.get_pixel(114, 50), AVERAGE);
        let path = tmp("curve.png");
        plot_loss_curve(&path, &pts, 10, 320, 200).unwrap();
        let back = image::open(&path).unwrap();
        assert_eq!((back.width(), back.height()), (320, 200));
        std::fs::remove_file(&path).unwrap();
        // Degenerate inputs still give an image.
        render_loss_curve(&[], 5, 100, 60).unwrap();
        render_loss_curve(&[(3, 0.5), (4, f64::NAN)], 5, 100, 60).unwrap();
        assert!(render_loss_curve(&pts, 5, 10, 10).is_err());
    }
}
