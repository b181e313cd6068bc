//! SQL: every query lives here.
