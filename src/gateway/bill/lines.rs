//! Line reading and field splitting shared by both bill formats.

use std::io::BufRead;

use super::BillError;

/// Reads raw lines (without the line ending), counting them for messages.
pub(crate) struct LineReader {
    inner: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    pub(crate) line: u64,
}

impl LineReader {
    pub(crate) fn new(inner: Box<dyn BufRead + Send>) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(512),
            line: 0,
        }
    }

    /// The next line's bytes, or `None` at the end. A read error (e.g. a gzip
    /// stream cut short) names the line it happened on.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, BillError> {
        self.buf.clear();
        let n = self
            .inner
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| BillError::Truncated {
                line: self.line,
                message: format!("the content stops decoding: {e}"),
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
            self.buf.pop();
        }
        Ok(Some(&self.buf))
    }
}

/// Splits one CSV line on commas, honouring RFC 4180 double quotes (a
/// product name may contain a comma). Fields are returned unquoted.
pub(crate) fn split_csv(line: &str) -> Vec<String> {
    if !line.contains('"') {
        return line.split(',').map(str::to_string).collect();
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => in_quotes = false,
            // WeChat puts its backtick before the quote: `"a, b"
            ('"', false) if field.trim().is_empty() || field == "`" => {
                if field != "`" {
                    field.clear();
                }
                in_quotes = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_commas_survive() {
        assert_eq!(split_csv("a,b,,c"), vec!["a", "b", "", "c"]);
        assert_eq!(
            split_csv("`1,\"x, y\",\"say \"\"hi\"\"\""),
            vec!["`1", "x, y", "say \"hi\""]
        );
        assert_eq!(
            split_csv("`a,`\"Tea, green\",`b"),
            vec!["`a", "`Tea, green", "`b"]
        );
    }
}
