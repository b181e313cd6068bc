//! The inbox: every processed request id with a digest of what it asked, in
//! the transaction of its effects. A redelivery finds its row and does
//! nothing; the same id with another body is `request_id_reused`.

use sqlx::PgConnection;

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller applies the request.
    New,
    /// Already processed with the same body: acknowledge, no effect, no event.
    Duplicate,
    /// Already processed with a different body.
    Reused,
}

/// Claims `request_id`. Inserting first (rather than select-then-insert)
/// makes a concurrent claim by another instance wait for our commit and
/// then see the row, so two instances never both apply one request.
pub async fn claim(
    conn: &mut PgConnection,
    request_id: &str,
    request_type: &str,
    body_hash: &[u8],
) -> Result<Claim, StoreError> {
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO inbox (request_id, request_type, body_hash, outcome) VALUES ($1, $2, $3, 'processed') \
         ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
    )
    .bind(request_id)
    .bind(request_type)
    .bind(body_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let existing: Vec<u8> = sqlx::query_scalar("SELECT body_hash FROM inbox WHERE request_id = $1")
        .bind(request_id)
        .fetch_one(conn)
        .await?;
    Ok(if existing == body_hash {
        Claim::Duplicate
    } else {
        Claim::Reused
    })
}

/// Records how a request ended (for operators reading the table).
pub async fn set_outcome(
    conn: &mut PgConnection,
    request_id: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE inbox SET outcome = $2 WHERE request_id = $1")
        .bind(request_id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}
