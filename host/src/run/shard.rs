//! Splitting one run into N independent jobs (`--shard I/N`): the rule that gives every unit
//! (a chain, an image, a digit) to exactly one shard, and the index of this job from the
//! scheduler (`--shard auto/N`).
//!
//! The rule: shard i of N takes the contiguous block of units ⌊i·T/N⌋ .. ⌊(i+1)·T/N⌋ of the
//! T units. Blocks are consecutive, cover 0..T once, and differ in size by at most one; when
//! N > T some shards are empty. A unit keeps its global index in its shard (chain c draws
//! `gaussian(seed, c, k, e)` wherever it runs), so the shards together compute exactly the
//! single run.

use std::ops::Range;
use std::str::FromStr;

use anyhow::{bail, Result};

/// The scheduler variables `--shard auto/N` reads, in this order: Slurm job arrays, then
/// Kubernetes Indexed Jobs.
pub const INDEX_VARIABLES: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// `--shard I/N` or `--shard auto/N` as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// A fixed index.
    Fixed(Shard),
    /// The index comes from the scheduler's environment.
    Auto {
        /// N.
        count: usize,
    },
}

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// I.
    pub index: usize,
    /// N.
    pub count: usize,
}

fn parse_count(text: &str, whole: &str) -> Result<usize> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("--shard {whole}: N must be a whole number >= 1"),
    }
}

impl FromStr for ShardArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ShardArg> {
        let Some((i, n)) = s.split_once('/') else {
            bail!("--shard {s}: expected I/N (0-based I < N) or auto/N");
        };
        let count = parse_count(n, s)?;
        if i == "auto" {
            return Ok(ShardArg::Auto { count });
        }
        let Ok(index) = i.parse::<usize>() else {
            bail!("--shard {s}: I must be a whole number >= 0 or `auto`");
        };
        Shard::new(index, count).map(ShardArg::Fixed)
    }
}

impl std::fmt::Display for ShardArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardArg::Fixed(s) => write!(f, "{}/{}", s.index, s.count),
            ShardArg::Auto { count } => write!(f, "auto/{count}"),
        }
    }
}

impl serde::Serialize for ShardArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// clap's parser for `--shard`.
pub fn parse_shard_arg(s: &str) -> Result<ShardArg, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

impl ShardArg {
    /// The shard, reading the scheduler's variable for `auto/N` from the process environment.
    pub fn resolve(self) -> Result<Shard> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// The shard, with `env` standing for the environment.
    pub fn resolve_with(self, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let count = match self {
            ShardArg::Fixed(s) => return Ok(s),
            ShardArg::Auto { count } => count,
        };
        let Some((name, value)) = INDEX_VARIABLES
            .iter()
            .find_map(|&name| env(name).map(|v| (name, v)))
        else {
            bail!(
                "--shard auto/{count}: neither {} nor {} is set (run it as a Slurm array task or a Kubernetes Indexed Job, or pass --shard I/{count})",
                INDEX_VARIABLES[0],
                INDEX_VARIABLES[1]
            );
        };
        let Ok(index) = value.trim().parse::<usize>() else {
            bail!("--shard auto/{count}: {name}={value:?} is not a whole number");
        };
        if index >= count {
            bail!("--shard auto/{count}: {name}={index} is not below N = {count}");
        }
        Shard::new(index, count)
    }
}

impl Shard {
    /// Shard `index` of `count`; checks I < N.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            bail!("--shard {index}/0: N must be at least 1");
        }
        if index >= count {
            bail!("--shard {index}/{count}: I must be below N (I is 0-based)");
        }
        Ok(Shard { index, count })
    }

    /// This shard's block of the units 0..total.
    pub fn block(self, total: usize) -> Range<usize> {
        let at = |i: usize| (i as u128 * total as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// "shard I/N".
    pub fn label(self) -> String {
        format!("shard {}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_unit_once_in_order_for_every_n() {
        for total in 0..=23usize {
            for count in 1..=total + 5 {
                let mut next = 0;
                let mut sizes = Vec::new();
                for index in 0..count {
                    let b = Shard::new(index, count).unwrap().block(total);
                    assert_eq!(b.start, next, "T {total} N {count} shard {index}");
                    next = b.end;
                    sizes.push(b.len());
                }
                assert_eq!(next, total, "T {total} N {count}: blocks end at T");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "T {total} N {count}: sizes {sizes:?}");
                if count > total {
                    assert!(sizes.contains(&0), "N > T leaves an empty shard");
                }
            }
        }
        // Large T: no overflow in i·T.
        let s = Shard::new(3, 4).unwrap();
        assert_eq!(s.block(usize::MAX / 2).end, usize::MAX / 2);
    }

    #[test]
    fn parses_fixed_and_auto_and_refuses_the_rest() {
        let fixed = |i, n| ShardArg::Fixed(Shard { index: i, count: n });
        assert_eq!("2/4".parse::<ShardArg>().unwrap(), fixed(2, 4));
        assert_eq!("0/1".parse::<ShardArg>().unwrap(), fixed(0, 1));
        assert_eq!(
            "auto/8".parse::<ShardArg>().unwrap(),
            ShardArg::Auto { count: 8 }
        );
        for bad in [
            "4/4", "5/4", "1/0", "auto/0", "x/4", "2", "-1/4", "2/four", "",
        ] {
            let e = bad.parse::<ShardArg>().unwrap_err();
            assert!(format!("{e:#}").contains("--shard"), "{bad}: {e:#}");
        }
        assert_eq!(fixed(2, 4).to_string(), "2/4");
        assert_eq!(ShardArg::Auto { count: 3 }.to_string(), "auto/3");
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_reads_slurm_or_kubernetes_index() {
        let auto = ShardArg::Auto { count: 4 };
        let slurm = auto
            .resolve_with(env(&[("SLURM_ARRAY_TASK_ID", "2")]))
            .unwrap();
        assert_eq!(slurm, Shard { index: 2, count: 4 });
        let k8s = auto
            .resolve_with(env(&[("JOB_COMPLETION_INDEX", "3")]))
            .unwrap();
        assert_eq!(k8s, Shard { index: 3, count: 4 });
        // Slurm's variable first when both are set.
        let both = auto
            .resolve_with(env(&[
                ("JOB_COMPLETION_INDEX", "3"),
                ("SLURM_ARRAY_TASK_ID", "1"),
            ]))
            .unwrap();
        assert_eq!(both.index, 1);
        // A fixed shard ignores the environment.
        let fixed = ShardArg::Fixed(Shard { index: 0, count: 4 });
        assert_eq!(
            fixed
                .resolve_with(env(&[("SLURM_ARRAY_TASK_ID", "9")]))
                .unwrap()
                .index,
            0
        );
    }

    #[test]
    fn auto_errors_name_the_variable() {
        let auto = ShardArg::Auto { count: 4 };
        let none = auto.resolve_with(env(&[])).unwrap_err().to_string();
        assert!(none.contains("SLURM_ARRAY_TASK_ID") && none.contains("JOB_COMPLETION_INDEX"));
        let big = auto
            .resolve_with(env(&[("SLURM_ARRAY_TASK_ID", "4")]))
            .unwrap_err()
            .to_string();
        assert!(
            big.contains("SLURM_ARRAY_TASK_ID=4") && big.contains("N = 4"),
            "{big}"
        );
        let k8s_big = auto
            .resolve_with(env(&[("JOB_COMPLETION_INDEX", "7")]))
            .unwrap_err()
            .to_string();
        assert!(k8s_big.contains("JOB_COMPLETION_INDEX=7"), "{k8s_big}");
        let junk = auto
            .resolve_with(env(&[("JOB_COMPLETION_INDEX", "two")]))
            .unwrap_err()
            .to_string();
        assert!(junk.contains("not a whole number"), "{junk}");
    }
}
