//! What a load run sends: which key, read or write, and when.
//!
//! Pure and seeded: the same seed gives the same sequence of operations, so two runs
//! against different clusters send the same load.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    Uniform,
    /// Zipf with exponent `s` (> 0): key 0 is the hottest.
    Zipf(f64),
}

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Read,
    Write,
    /// `reads` reads for every `writes` writes.
    Mixed {
        reads: u32,
        writes: u32,
    },
    Cas,
    List,
}

/// One operation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read(u64),
    Write(u64),
    Cas(u64),
    List(u64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("unknown key distribution {0:?}: use uniform or zipf:S with S > 0")]
    KeyDist(String),
    #[error("unknown workload {0:?}: use read, write, mixed:R/W, cas or list")]
    Mix(String),
}

impl std::str::FromStr for KeyDist {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        match s.strip_prefix("zipf:").map(str::parse::<f64>) {
            Some(Ok(x)) if x > 0.0 && x.is_finite() => Ok(KeyDist::Zipf(x)),
            _ => Err(ParseError::KeyDist(s.to_string())),
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Mix(s.to_string());
        match s {
            "read" => Ok(Mix::Read),
            "write" => Ok(Mix::Write),
            "cas" => Ok(Mix::Cas),
            "list" => Ok(Mix::List),
            _ => {
                let ratio = s.strip_prefix("mixed:").ok_or_else(bad)?;
                let (r, w) = ratio.split_once('/').ok_or_else(bad)?;
                let (reads, writes) =
                    (r.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
                if reads == 0 && writes == 0 {
                    return Err(bad());
                }
                Ok(Mix::Mixed { reads, writes })
            }
        }
    }
}

/// A seeded generator of operations.
#[derive(Debug)]
pub struct Generator {
    rng: SmallRng,
    keys: u64,
    zipf: Option<Zipf<f64>>,
    mix: Mix,
}

impl Generator {
    /// `keys` must be at least 1.
    pub fn new(seed: u64, keys: u64, dist: KeyDist, mix: Mix) -> Generator {
        let keys = keys.max(1);
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf(s) => Zipf::new(keys as f64, s).ok(),
        };
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            keys,
            zipf,
            mix,
        }
    }

    fn key(&mut self) -> u64 {
        match &self.zipf {
            // Zipf samples 1..=n; key 0 is the most popular.
            Some(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1,
            None => self.rng.random_range(0..self.keys),
        }
    }

    pub fn next_op(&mut self) -> Op {
        let k = self.key();
        match self.mix {
            Mix::Read => Op::Read(k),
            Mix::Write => Op::Write(k),
            Mix::Cas => Op::Cas(k),
            Mix::List => Op::List(k),
            Mix::Mixed { reads, writes } => {
                if self.rng.random_range(0..reads + writes) < reads {
                    Op::Read(k)
                } else {
                    Op::Write(k)
                }
            }
        }
    }
}

/// When operation `i` is due in an open-loop run at `rate` ops/s (`rate` > 0): the
/// intended send time, from which latency is measured, so a stalled server is charged for
/// every request it delayed (no coordinated omission).
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// The key name for key number `k` (fixed width, so keys sort by number).
pub fn key_name(k: u64) -> String {
    format!("loadgen/{k:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_operations() {
        let mut a = Generator::new(
            7,
            1000,
            KeyDist::Zipf(1.1),
            Mix::Mixed {
                reads: 9,
                writes: 1,
            },
        );
        let mut b = Generator::new(
            7,
            1000,
            KeyDist::Zipf(1.1),
            Mix::Mixed {
                reads: 9,
                writes: 1,
            },
        );
        for _ in 0..1000 {
            assert_eq!(a.next_op(), b.next_op());
        }
    }

    #[test]
    fn a_mix_of_nine_reads_to_one_write_sends_about_ten_percent_writes() {
        let mut g = Generator::new(1, 100, KeyDist::Uniform, "mixed:9/1".parse().unwrap());
        let writes = (0..100_000)
            .filter(|_| matches!(g.next_op(), Op::Write(_)))
            .count();
        assert!((9_000..11_000).contains(&writes), "{writes}");
    }

    #[test]
    fn zipf_keys_stay_in_range_and_favour_key_zero() {
        let mut g = Generator::new(3, 50, "zipf:1.2".parse().unwrap(), Mix::Read);
        let mut hits = [0u32; 50];
        for _ in 0..50_000 {
            let Op::Read(k) = g.next_op() else {
                unreachable!()
            };
            hits[k as usize] += 1;
        }
        assert!(hits[0] > hits[10] * 5, "{hits:?}");
    }

    #[test]
    fn bad_names_are_clear_errors() {
        assert!("zipf:0".parse::<KeyDist>().is_err());
        assert!("zipf:x".parse::<KeyDist>().is_err());
        assert!("mixed:3".parse::<Mix>().is_err());
        assert!("mixed:0/0".parse::<Mix>().is_err());
        assert_eq!(
            "mixed:3/1".parse::<Mix>(),
            Ok(Mix::Mixed {
                reads: 3,
                writes: 1
            })
        );
    }

    #[test]
    fn open_loop_send_times_are_evenly_spaced() {
        assert_eq!(intended_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(intended_offset(1500, 1000.0), Duration::from_millis(1500));
    }
}
