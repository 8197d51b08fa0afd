//! Helpers shared by the fuzz targets: reading a fuzz input as a few fields, choosing a region,
//! and cutting an input into chunks.

use consentry::domain::Region;

/// Regions national number forms are read in. The first is the default of most tenants.
pub const REGIONS: [&str; 16] = [
    "US", "GB", "FR", "DE", "BR", "IN", "AU", "CA", "MX", "JP", "IT", "CN", "AR", "ID", "GA", "RU",
];

/// The region of a selector byte.
pub fn region(selector: u8) -> Region {
    REGIONS[selector as usize % REGIONS.len()]
        .parse()
        .expect("the listed regions are known")
}

/// Reads an input as a selector byte and fields separated by `0xFF` bytes (never UTF-8).
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Fields { rest: data }
    }

    /// The next byte, 0 once the input is exhausted.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// The bytes up to the next `0xFF` (or the end).
    pub fn field(&mut self) -> &'a [u8] {
        match self.rest.iter().position(|&b| b == 0xFF) {
            Some(at) => {
                let field = &self.rest[..at];
                self.rest = &self.rest[at + 1..];
                field
            }
            None => std::mem::take(&mut self.rest),
        }
    }

    /// The next field as text (lossy: invalid UTF-8 becomes U+FFFD).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.field()).into_owned()
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// Expands runs so that short inputs can reach the long-line limits: `0xFE k b` stands for
/// `k * 512` copies of `b`. Other bytes are copied.
pub fn expand(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0xFE && i + 2 < data.len() {
            let count = data[i + 1] as usize * 512;
            out.extend(std::iter::repeat(data[i + 2]).take(count));
            i += 3;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn no_empty_chunks() -> bool {
    static NO_EMPTY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_EMPTY.get_or_init(|| std::env::var_os("FUZZ_NO_EMPTY_CHUNKS").is_some_and(|v| v == "1"))
}

/// Cuts `data` into chunks whose sizes a seed chooses (1 to 64 bytes, or a whole 4 KiB
/// block), deterministically.
pub fn chunks(data: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let r = next();
        let size = if r % 8 == 0 {
            4096
        } else {
            1 + (r >> 8) as usize % 64
        };
        let size = size.min(rest.len());
        out.push(&rest[..size]);
        rest = &rest[size..];
        // An empty push now and then: a reader must take it as nothing. Set
        // FUZZ_NO_EMPTY_CHUNKS=1 to leave them out (to look past a known bug with them).
        if r % 13 == 0 && !no_empty_chunks() {
            out.push(&[]);
        }
    }
    out
}
