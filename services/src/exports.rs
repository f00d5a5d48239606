//! Streaming an export's rows ([`circle_projections::exports`]) as CSV or NDJSON.
//!
//! The export's header facts (row count, the client ids the access log's entry names
//! before the first byte leaves) are computed first; the rows are then computed again
//! from the export's snapshot of the practice and encoded a chunk at a time as the
//! client reads: neither the rows nor the body are ever held whole.

use bytes::Bytes;
use circle_projections::exports::{self, Export};
use futures_util::Stream;

/// Rows encoded per chunk of the body.
const CHUNK_ROWS: usize = 1024;

/// How the rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 4180: a header row, CRLF line ends.
    Csv,
    /// A header line `{"export": {...}}`, then one object per row.
    Ndjson,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Csv => "text/csv; charset=utf-8; header=present",
            Encoding::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Csv => "csv",
            Encoding::Ndjson => "ndjson",
        }
    }
}

/// The export's bytes, a chunk at a time: the header, then `CHUNK_ROWS` rows per chunk.
pub fn encode(export: Export, encoding: Encoding) -> impl Stream<Item = Bytes> + Send {
    let mut header = Vec::new();
    match encoding {
        Encoding::Csv => exports::csv_header(export.columns, &mut header),
        Encoding::Ndjson => exports::ndjson_header(&export, &mut header),
    }
    let columns = export.columns;
    let mut rows = export.rows();
    let chunks = std::iter::from_fn(move || {
        let mut out = Vec::new();
        for row in rows.by_ref().take(CHUNK_ROWS) {
            match encoding {
                Encoding::Csv => exports::csv_row(&row, &mut out),
                Encoding::Ndjson => exports::ndjson_row(columns, &row, &mut out),
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    });
    futures_util::stream::iter(std::iter::once(Bytes::from(header)).chain(chunks))
}
