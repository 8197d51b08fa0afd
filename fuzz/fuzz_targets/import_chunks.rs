//! The consent import's push parsers, `import::NdjsonLines` and `import::CsvRecords`, fed the
//! same input whole and in chunks of sizes a seed picks.
//!
//! Input: a seed byte, then the data. In the data, `0xFE k b` stands for `k * 512` copies of
//! `b` (`fuzz_common::expand`), so that short inputs reach the 64 KiB line limit.
//!
//! Property (the module's promise, "bytes arrive in chunks of any size"): the lines or
//! records, and the first error, do not depend on how the input is split. The splits include
//! empty chunks (a zero-length frame); `FUZZ_NO_EMPTY_CHUNKS=1` leaves them out.
#![no_main]

use consentry::import::{CsvRecords, ImportError, NdjsonLines};
use fuzz_common::{chunks, expand};
use libfuzzer_sys::fuzz_target;

/// Everything a reader gives for these chunks: the items until the first error, and it.
fn run<T>(
    pieces: &[&[u8]],
    mut push: impl FnMut(&[u8]) -> Result<Vec<T>, ImportError>,
    finish: impl FnOnce() -> Result<Vec<T>, ImportError>,
) -> (Vec<T>, Option<ImportError>) {
    let mut items = Vec::new();
    for piece in pieces {
        match push(piece) {
            Ok(more) => items.extend(more),
            Err(error) => return (items, Some(error)),
        }
    }
    match finish() {
        Ok(more) => items.extend(more),
        Err(error) => return (items, Some(error)),
    }
    (items, None)
}

fn compare<T: PartialEq + std::fmt::Debug>(
    what: &str,
    whole: &(Vec<T>, Option<ImportError>),
    split: &(Vec<T>, Option<ImportError>),
    sizes: &[usize],
) {
    assert_eq!(whole.1, split.1, "{what}: the error depends on the split {sizes:?}");
    if whole.1.is_none() {
        assert_eq!(whole.0, split.0, "{what}: the items depend on the split {sizes:?}");
    } else {
        // Items before an error: those of the pushes that succeeded, so a split may show
        // more of them than the whole input did; never different ones.
        let n = whole.0.len().min(split.0.len());
        assert_eq!(whole.0[..n], split.0[..n], "{what}: items differ before the error");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let input = expand(rest);
    let pieces = chunks(&input, u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ input.len() as u64);
    let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    let bytes_one: Vec<&[u8]> = input.chunks(1).collect();

    // NDJSON.
    let ndjson = |pieces: &[&[u8]]| {
        let reader = std::cell::RefCell::new(NdjsonLines::default());
        run(
            pieces,
            |chunk| reader.borrow_mut().push(chunk),
            || reader.borrow_mut().finish(),
        )
    };
    let whole = ndjson(&[&input[..]]);
    compare("ndjson", &whole, &ndjson(&pieces), &sizes);
    if input.len() <= 2048 {
        compare("ndjson", &whole, &ndjson(&bytes_one), &[1]);
    }
    if whole.1.is_none() {
        let mut last = 0;
        for (line, text) in &whole.0 {
            assert!(*line > last, "ndjson: line numbers do not increase");
            last = *line;
            assert!(!text.contains('\n'), "ndjson: a line holds a newline");
            assert!(!text.trim().is_empty(), "ndjson: a blank line is given");
        }
    }

    // CSV.
    let csv = |pieces: &[&[u8]]| {
        let reader = std::cell::RefCell::new(CsvRecords::default());
        run(
            pieces,
            |chunk| reader.borrow_mut().push(chunk),
            || reader.borrow_mut().finish(),
        )
    };
    let whole = csv(&[&input[..]]);
    compare("csv", &whole, &csv(&pieces), &sizes);
    if input.len() <= 2048 {
        compare("csv", &whole, &csv(&bytes_one), &[1]);
    }
    if whole.1.is_none() {
        for (index, (number, _)) in whole.0.iter().enumerate() {
            assert_eq!(*number, index as u64 + 1, "csv: records are not numbered from 1");
        }
    }
});
