//! Helpers shared by the lab suites.

use driver_sim::executor::with_rng;

/// A random string of `n` URL-safe characters (the Go tests' `randstring`).
pub fn rand_string(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..n)
        .map(|_| ALPHABET[with_rng(|r| r.below(ALPHABET.len() as u64)) as usize] as char)
        .collect()
}
