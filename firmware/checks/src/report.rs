//! The text the checks report, one line at a time, assembled without `core::fmt`:
//!
//! - `hash <check> <label> <16 hex digits>`: compared bit for bit with `firmware/golden.txt`;
//! - `cost <label> <decimal>`: a measurement (instructions), not compared.
//!
//! [`Clock`] is the board's instruction counter; [`NoClock`] (the host) counts nothing.

use crate::hash::Fnv1a;

/// Capacity of a [`Line`] in bytes (names are short ASCII words).
const CAPACITY: usize = 96;

/// One ASCII line in a fixed buffer; text beyond the capacity is cut off.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; CAPACITY],
            len: 0,
        }
    }

    /// Appends text.
    pub fn text(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len < CAPACITY {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `v` as 16 lower-case hex digits.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let mut digits = [0u8; 16];
        for (i, d) in digits.iter_mut().enumerate() {
            let nibble = (v >> (60 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef"[nibble as usize];
        }
        self.raw(&digits)
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.raw(&digits[start..])
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            if self.len < CAPACITY {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// The bytes so far (ASCII, no newline).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where the lines go (semihosting on a board, a string on the host).
pub trait Report {
    /// One complete line, without the newline.
    fn line(&mut self, line: &[u8]);

    /// Reports `hash <check> <label> <hex>`.
    fn hash(&mut self, check: &str, label: &str, hash: &Fnv1a) {
        let mut l = Line::new();
        l.text("hash ")
            .text(check)
            .text(" ")
            .text(label)
            .text(" ")
            .hex(hash.value());
        self.line(l.as_bytes());
    }

    /// Reports `cost <label> <value>`.
    fn cost(&mut self, label: &str, value: u64) {
        let mut l = Line::new();
        l.text("cost ").text(label).text(" ").dec(value);
        self.line(l.as_bytes());
    }
}

/// The board's instruction counter (RISC-V `minstret`, Arm SysTick under QEMU `-icount`).
pub trait Clock {
    /// Instructions retired so far, or `None` where nothing is counted.
    fn instructions(&mut self) -> Option<u64>;
}

/// No counter: the checks report no cost lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClock;

impl Clock for NoClock {
    fn instructions(&mut self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_hex_and_decimal() {
        let mut l = Line::new();
        l.text("a ")
            .hex(0x0123_4567_89ab_cdef)
            .text(" ")
            .dec(0)
            .text(" ");
        l.dec(u64::MAX);
        assert_eq!(l.as_bytes(), b"a 0123456789abcdef 0 18446744073709551615");
    }
}
