//! Rows written with `COPY … FROM STDIN (FORMAT BINARY)` instead of an
//! INSERT: PostgreSQL writes a COPY's rows many to a heap call and to a WAL
//! record, where INSERT … SELECT writes and logs each row on its own.
//!
//! Each value is encoded by sqlx's own `Encode`, the bytes a bound
//! parameter of that type carries, so a column gets exactly what an INSERT
//! would give it. That is why the stream is built in sqlx's argument
//! buffer. The deferred fix-ups an encoder may register there (Json's, in
//! case the parameter turns out to be JSON rather than JSONB) are never
//! applied, which is right for the JSONB columns COPY writes here.

use sqlx::encode::IsNull;
use sqlx::postgres::PgArgumentBuffer;
use sqlx::{Encode, PgConnection, Postgres};

/// The binary COPY stream's fixed header: signature, flags, no extension.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Ends the stream (a tuple with field count -1).
const TRAILER: &[u8] = &[0xff, 0xff];

/// A binary COPY stream being built, one row at a time, for the columns it
/// was made for: the statement and the rows' width come from one list.
pub struct CopyRows {
    statement: String,
    data: PgArgumentBuffer,
    columns: u16,
    left_in_row: u16,
}

impl CopyRows {
    /// Rows for `columns` of `table`, whose fields follow in that order.
    pub fn new(table: &'static str, columns: &[&'static str]) -> Self {
        let mut data = PgArgumentBuffer::default();
        data.extend_from_slice(HEADER);
        CopyRows {
            statement: format!(
                "COPY {table} ({}) FROM STDIN (FORMAT BINARY)",
                columns.join(", ")
            ),
            data,
            columns: u16::try_from(columns.len()).unwrap_or(u16::MAX),
            left_in_row: 0,
        }
    }

    /// Starts the next row; its `columns` fields follow with `field`.
    pub fn row(&mut self) -> &mut Self {
        debug_assert_eq!(self.left_in_row, 0, "the previous row is incomplete");
        self.data.extend_from_slice(&self.columns.to_be_bytes());
        self.left_in_row = self.columns;
        self
    }

    /// Appends one field of the current row, encoded as sqlx would bind it.
    pub fn field<'q, T: Encode<'q, Postgres>>(
        &mut self,
        value: &T,
    ) -> Result<&mut Self, sqlx::Error> {
        debug_assert!(self.left_in_row > 0, "more fields than columns");
        self.left_in_row = self.left_in_row.saturating_sub(1);
        // The length goes before the value: a placeholder, then the value's
        // size once it is encoded.
        let at = self.data.len();
        self.data.extend_from_slice(&[0; 4]);
        let len = match value
            .encode_by_ref(&mut self.data)
            .map_err(sqlx::Error::Encode)?
        {
            IsNull::Yes => {
                self.data.truncate(at + 4);
                -1
            }
            IsNull::No => i32::try_from(self.data.len() - at - 4)
                .map_err(|_| sqlx::Error::Encode("a COPY field longer than 2 GiB".into()))?,
        };
        self.data[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(self)
    }

    /// Sends the rows; returns how many PostgreSQL wrote. An error (a
    /// unique key taken, say) fails the whole COPY and leaves the
    /// connection usable.
    pub async fn send(mut self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        debug_assert_eq!(self.left_in_row, 0, "the last row is incomplete");
        self.data.extend_from_slice(TRAILER);
        let mut copy = conn.copy_in_raw(&self.statement).await?;
        if let Err(e) = copy.send(self.data.as_slice()).await {
            // The server's own error, if it sent one, comes with the abort.
            copy.abort("payrecon: sending the rows failed").await?;
            return Err(e);
        }
        copy.finish().await
    }
}
