//! Seeded byte-string mutations for the parsers' unit tests and the
//! integration tests' mutated traffic (`tests/robustness.rs` includes this
//! file): the same inputs on every run, no extra crate.

/// A xorshift64 generator.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// Applies `edits` edits to `raw`, each replacing, inserting or
    /// removing one byte (inserted and replacing bytes drawn from
    /// `alphabet`), or, when `cut` is set, possibly cutting `raw` short.
    pub fn mutate(&mut self, raw: &mut Vec<u8>, alphabet: &[u8], edits: usize, cut: bool) {
        for _ in 0..edits {
            let b = alphabet[self.below(alphabet.len())];
            match (self.below(if cut { 4 } else { 3 }), raw.len()) {
                (_, 0) | (1, _) => {
                    let at = self.below(raw.len() + 1);
                    raw.insert(at, b);
                }
                (0, len) => {
                    let at = self.below(len);
                    raw[at] = b;
                }
                (2, len) => {
                    let at = self.below(len);
                    raw.remove(at);
                }
                (_, len) => {
                    let at = self.below(len + 1);
                    raw.truncate(at);
                }
            }
        }
    }
}
