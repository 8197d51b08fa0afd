//! Streaming readers for bulk imports: bytes arrive in chunks of any size, complete records
//! come out one at a time, and memory stays bounded by the longest line, whatever the size of
//! the file.
//!
//! - [`NdjsonLines`]: one JSON value per line (`\n` or `\r\n`); blank lines are skipped but
//!   counted, so line numbers are those of the file.
//! - [`CsvRecords`]: RFC 4180 CSV (quoted fields may hold commas, quotes and newlines), on
//!   `csv-core`'s push parser. Records are numbered from 1, the header: the number is the
//!   file's line number unless a quoted field spans lines or blank lines are skipped.

/// The longest line (or CSV record) accepted.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("line {0} is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong(u64),
    #[error("line {0} is not UTF-8")]
    NotUtf8(u64),
}

/// Splits NDJSON into lines.
#[derive(Debug, Default)]
pub struct NdjsonLines {
    pending: Vec<u8>,
    line: u64,
}

impl NdjsonLines {
    /// Feeds a chunk; returns the complete, non-blank lines in it with their line numbers.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<(u64, String)>, ImportError> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            self.line += 1;
            self.take_line(&mut lines)?;
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE_BYTES {
            return Err(ImportError::LineTooLong(self.line + 1));
        }
        Ok(lines)
    }

    /// Ends the input; returns the last line if it had no newline.
    pub fn finish(&mut self) -> Result<Vec<(u64, String)>, ImportError> {
        let mut lines = Vec::new();
        if !self.pending.is_empty() {
            self.line += 1;
            self.take_line(&mut lines)?;
        }
        Ok(lines)
    }

    fn take_line(&mut self, lines: &mut Vec<(u64, String)>) -> Result<(), ImportError> {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.len() > MAX_LINE_BYTES {
            return Err(ImportError::LineTooLong(self.line));
        }
        let text = String::from_utf8(bytes).map_err(|_| ImportError::NotUtf8(self.line))?;
        if !text.trim().is_empty() {
            lines.push((self.line, text));
        }
        Ok(())
    }
}

/// Splits CSV into records of fields.
pub struct CsvRecords {
    reader: csv_core::Reader,
    output: Vec<u8>,
    output_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    record: u64,
}

impl std::fmt::Debug for CsvRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvRecords")
            .field("record", &self.record)
            .finish()
    }
}

impl Default for CsvRecords {
    fn default() -> Self {
        CsvRecords {
            reader: csv_core::ReaderBuilder::new().build(),
            output: vec![0; 4096],
            output_len: 0,
            ends: vec![0; 32],
            ends_len: 0,
            record: 0,
        }
    }
}

impl CsvRecords {
    /// Feeds a chunk; returns the complete records in it with their numbers.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<(u64, Vec<String>)>, ImportError> {
        self.read(chunk, false)
    }

    /// Ends the input; returns the last record if it had no line ending.
    pub fn finish(&mut self) -> Result<Vec<(u64, Vec<String>)>, ImportError> {
        self.read(&[], true)
    }

    fn read(
        &mut self,
        mut input: &[u8],
        at_end: bool,
    ) -> Result<Vec<(u64, Vec<String>)>, ImportError> {
        use csv_core::ReadRecordResult;
        let mut records = Vec::new();
        loop {
            // csv-core reads an empty input as the end of the file: an empty chunk (an h2 DATA
            // frame may be empty) must not end the record being read. Found by fuzzing.
            if input.is_empty() && !at_end {
                return Ok(records);
            }
            let (result, read, written, ended) = self.reader.read_record(
                input,
                &mut self.output[self.output_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.output_len += written;
            self.ends_len += ended;
            match result {
                ReadRecordResult::InputEmpty if !at_end => return Ok(records),
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    if self.output.len() >= MAX_LINE_BYTES {
                        return Err(ImportError::LineTooLong(self.record + 1));
                    }
                    let grown = (self.output.len() * 2).min(MAX_LINE_BYTES);
                    self.output.resize(grown, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let grown = self.ends.len() * 2;
                    self.ends.resize(grown, 0);
                }
                ReadRecordResult::Record => {
                    self.record += 1;
                    let fields = self.fields(self.record)?;
                    records.push((self.record, fields));
                    self.output_len = 0;
                    self.ends_len = 0;
                }
                ReadRecordResult::End => return Ok(records),
            }
        }
    }

    fn fields(&self, line: u64) -> Result<Vec<String>, ImportError> {
        let mut start = 0;
        self.ends[..self.ends_len]
            .iter()
            .map(|&end| {
                let field = std::str::from_utf8(&self.output[start..end])
                    .map(str::to_owned)
                    .map_err(|_| ImportError::NotUtf8(line));
                start = end;
                field
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of every size from 1 to 7 bytes, and checks each gives `expected`.
    fn check_csv(input: &str, expected: &[(u64, Vec<&str>)]) {
        for size in 1..=7 {
            let mut reader = CsvRecords::default();
            let mut records = Vec::new();
            for chunk in input.as_bytes().chunks(size) {
                records.extend(reader.push(chunk).unwrap());
            }
            records.extend(reader.finish().unwrap());
            let expected: Vec<(u64, Vec<String>)> = expected
                .iter()
                .map(|(line, fields)| (*line, fields.iter().map(|f| f.to_string()).collect()))
                .collect();
            assert_eq!(records, expected, "chunks of {size}");
        }
    }

    #[test]
    fn csv_records_survive_any_chunking() {
        check_csv(
            "number,action\n+14155550123,opt_in\r\n\"(415) 555-0124\",\"opt_out\"\n",
            &[
                (1, vec!["number", "action"]),
                (2, vec!["+14155550123", "opt_in"]),
                (3, vec!["(415) 555-0124", "opt_out"]),
            ],
        );
        check_csv(
            "a,b\n\"multi\nline, with \"\"quotes\"\"\",x\n\nlast,row",
            &[
                (1, vec!["a", "b"]),
                (2, vec!["multi\nline, with \"quotes\"", "x"]),
                (3, vec!["last", "row"]),
            ],
        );
    }

    #[test]
    fn an_empty_chunk_does_not_end_a_csv_record() {
        // Fuzzing found it: "\x7e" then an empty chunk then "x\n" is one record, as unchunked.
        let mut reader = CsvRecords::default();
        let mut records = reader.push(b"ab").unwrap();
        records.extend(reader.push(b"").unwrap());
        records.extend(reader.push(b"c,d\n").unwrap());
        records.extend(reader.finish().unwrap());
        assert_eq!(records, vec![(1, vec!["abc".to_owned(), "d".to_owned()])]);
    }

    #[test]
    fn ndjson_lines_keep_file_line_numbers() {
        let input = "{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}";
        for size in 1..=5 {
            let mut reader = NdjsonLines::default();
            let mut lines = Vec::new();
            for chunk in input.as_bytes().chunks(size) {
                lines.extend(reader.push(chunk).unwrap());
            }
            lines.extend(reader.finish().unwrap());
            assert_eq!(
                lines,
                vec![
                    (1, "{\"a\":1}".to_owned()),
                    (3, "{\"b\":2}".to_owned()),
                    (4, "{\"c\":3}".to_owned())
                ]
            );
        }
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut reader = NdjsonLines::default();
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert_eq!(reader.push(&long), Err(ImportError::LineTooLong(1)));
        let mut csv = CsvRecords::default();
        let result = csv.push(&long).and_then(|_| csv.finish());
        assert_eq!(result, Err(ImportError::LineTooLong(1)));
    }
}
